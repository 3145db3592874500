"""shadowrl: rehearse rollbacks in a shadow deployment before they are needed.

Importing the package registers ``shadowrl/Rollback-v0`` with Gymnasium when Gymnasium is
installed (the ``rl`` extra); the simulator, the scenario format and rehearsals need none of
the RL, Ray or MLflow dependencies.
"""

__version__ = "0.1.0"

try:
    from gymnasium.envs.registration import register, registry
except ImportError:  # the core install: no RL environment to register
    pass
else:
    if "shadowrl/Rollback-v0" not in registry:
        register(id="shadowrl/Rollback-v0", entry_point="shadowrl.rl.env:RollbackEnv")
