"""shadowrl: rehearse rollbacks in a shadow deployment before they are needed."""

from gymnasium.envs.registration import register, registry

__version__ = "0.1.0"

if "shadowrl/Rollback-v0" not in registry:
    register(id="shadowrl/Rollback-v0", entry_point="shadowrl.env:RollbackEnv")
