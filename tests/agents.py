"""A tiny agent config for tests that train a policy only to have one (seconds of training,
no evaluations or checkpoints on the way)."""

TINY_AGENT = """\
algorithm: maskable_ppo
policy: MlpPolicy
n_envs: 2
timesteps: 1024
hyperparameters: {n_steps: 128, batch_size: 64, n_epochs: 2, gamma: 1.0}
policy_kwargs: {net_arch: [32, 32]}
eval: {freq: 1000000, episodes: 2, seed: 100000}
checkpoint: {freq: 1000000}
"""
