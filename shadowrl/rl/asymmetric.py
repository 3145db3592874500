"""An asymmetric actor-critic: the critic is trained on the hidden incident, the actor never is.

PPO's critic only shapes the advantages the actor learns from; it is never used to act. In
training, the simulated shadow knows what no policy can see at a real breach: which incident
was injected, how strong it is, today's load level and the time of day. A critic that sees
them predicts an episode's cost far better than one that must guess them from the breach,
so the actor's advantages carry less noise, and the actor (which still sees only the
observation) learns from cleaner signal (Pinto et al., *Asymmetric Actor Critic for
Image-Based Robot Learning*, 2017).

- :class:`HiddenIncident` appends the hidden incident to each observation, for training.
- :class:`AsymmetricMaskablePolicy` zeroes those entries before the actor's network, so
  the actor's choices depend on the observation alone.
- :func:`actor_only` turns a trained model into an ordinary MaskablePPO model on the plain
  observation (the actor's weights, the hidden columns dropped): what ``policy.zip`` holds,
  so every user of a trained policy (evaluate, the registry, export, the service) sees a
  policy on ``RollbackEnv``'s own observation space.
"""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from sb3_contrib import MaskablePPO
from sb3_contrib.common.maskable.policies import MaskableActorCriticPolicy
from stable_baselines3.common.torch_layers import FlattenExtractor

from shadowrl.rl.env import RollbackEnv

DAY_S = 86_400.0
HIDDEN_CAP = 10.0


def hidden_size(env: RollbackEnv) -> int:
    """Entries :class:`HiddenIncident` appends: one per incident, then magnitude, load
    level, the load pattern now, the time of day (sine, cosine), minutes since the onset."""
    return len(env.scenario.incidents) + 6


class HiddenIncident(gym.ObservationWrapper[np.ndarray, int, np.ndarray]):
    """The observation, then the hidden incident (training only: the critic's input)."""

    def __init__(self, env: RollbackEnv) -> None:
        super().__init__(env)
        self.rollback_env = env
        self.incidents = [i.name for i in env.scenario.incidents]
        n = int(env.observation_space.shape[0]) + hidden_size(env)  # type: ignore[index]
        self.observation_space = spaces.Box(-HIDDEN_CAP, HIDDEN_CAP, (n,), np.float32)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return np.concatenate([observation, np.asarray(self.hidden(), dtype=np.float32)])

    def hidden(self) -> list[float]:
        env = self.rollback_env
        inj = env.injection
        if inj is None:
            return [0.0] * hidden_size(env)
        now = env.shadow.now()
        at = inj.start_offset_s + now
        pattern = getattr(env.shadow, "load_pattern", None)
        load_now = pattern(at) if pattern is not None else 1.0
        values = [1.0 if name == inj.incident else 0.0 for name in self.incidents]
        values += [inj.magnitude, inj.load_multiplier, load_now,
                   math.sin(2 * math.pi * at / DAY_S), math.cos(2 * math.pi * at / DAY_S),
                   (now - inj.onset_s) / 600.0]
        return [min(max(v, -HIDDEN_CAP), HIDDEN_CAP) for v in values]

    def action_masks(self) -> np.ndarray:
        return self.rollback_env.action_masks()


class ObservedOnly(FlattenExtractor):
    """Flatten, then zero every entry past the first ``n_observed``: the actor's view."""

    def __init__(self, observation_space: spaces.Box, n_observed: int) -> None:
        super().__init__(observation_space)
        keep = torch.zeros(int(np.prod(observation_space.shape)))
        keep[:n_observed] = 1.0
        self.register_buffer("keep", keep)

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        return super().forward(observations) * self.keep


class AsymmetricMaskablePolicy(MaskableActorCriticPolicy):
    """MaskablePPO's policy with separate feature extractors: the critic's sees the whole
    input, the actor's (:class:`ObservedOnly`) the observation alone."""

    def __init__(self, *args: Any, n_observed: int, **kwargs: Any) -> None:
        kwargs["share_features_extractor"] = False
        self.n_observed = n_observed
        super().__init__(*args, **kwargs)
        self.features_extractor = ObservedOnly(self.observation_space,  # type: ignore[arg-type]
                                               n_observed)
        self.pi_features_extractor = self.features_extractor

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data["n_observed"] = self.n_observed
        return data


def actor_only(model: MaskablePPO, env: gym.Env[Any, Any]) -> MaskablePPO:
    """An ordinary MaskablePPO ``MlpPolicy`` model on ``env`` (a plain RollbackEnv) with the
    trained actor: the same action probabilities on every observation. Its critic is a fresh
    one (nothing uses a critic to act)."""
    policy = model.policy
    assert isinstance(policy, AsymmetricMaskablePolicy)
    n = policy.n_observed
    kwargs = {"net_arch": policy.net_arch, "activation_fn": policy.activation_fn,
              "ortho_init": policy.ortho_init}
    plain = MaskablePPO("MlpPolicy", env, device="cpu", verbose=0, policy_kwargs=kwargs,
                        n_steps=model.n_steps, batch_size=model.batch_size,
                        gamma=model.gamma, gae_lambda=model.gae_lambda,
                        ent_coef=model.ent_coef, n_epochs=model.n_epochs)
    target = plain.policy
    with torch.no_grad():
        # the first layer reading the features drops the hidden columns (the actor's input
        # there was always zero); every later layer is copied as it is
        pairs = [(src, dst) for src, dst in zip(
            [m for m in policy.mlp_extractor.policy_net if isinstance(m, torch.nn.Linear)],
            [m for m in target.mlp_extractor.policy_net if isinstance(m, torch.nn.Linear)],
            strict=True)]
        pairs.append((policy.action_net, target.action_net))
        for i, (src, dst) in enumerate(pairs):
            dst.weight.copy_(src.weight[:, :n] if i == 0 else src.weight)
            dst.bias.copy_(src.bias)
    plain.num_timesteps = model.num_timesteps
    return plain
