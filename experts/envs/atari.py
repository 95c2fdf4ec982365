"""Atari 57 on ALE v5: sticky actions (p=0.25, per frame, as ALE v5 does), frame skip 4 with
max-pooling, 30 no-op starts, 84x84 grayscale, 4 stacked frames.

The agent sees (4, 84, 84) uint8 (channels first, what SB3 and sample-factory CNNs expect);
shards store it as an (84, 84, 4) image. The action set is the minimal one unless the task
options ask for the full 18 actions; the choice is recorded in the task spec.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from experts.envs.domain import Domain, discrete_action_columns
from shards import ModalitySpec

# The Atari-57 benchmark (Badia et al. 2020), named as JAT names them (ALE rom id minus "_").
ATARI_57 = (
    "alien amidar assault asterix asteroids atlantis bankheist battlezone beamrider berzerk bowling "
    "boxing breakout centipede choppercommand crazyclimber defender demonattack doubledunk enduro "
    "fishingderby freeway frostbite gopher gravitar hero icehockey jamesbond kangaroo krull "
    "kungfumaster montezumarevenge mspacman namethisgame phoenix pitfall pong privateeye qbert "
    "riverraid roadrunner robotank seaquest skiing solaris spaceinvaders stargunner surround tennis "
    "timepilot tutankham upndown venture videopinball wizardofwor yarsrevenge zaxxon"
).split()

FRAME_STACK = 4
SCREEN = 84


class AtariDomain(Domain):
    name = "atari"

    def __init__(self, full_action_space: bool = False) -> None:
        self.full_action_space = full_action_space
        self._n_actions: dict[str, int] = {}

    def task_ids(self) -> list[str]:
        return [f"atari/{game}" for game in ATARI_57]

    def env_id(self, task_id: str) -> str:
        return f"ALE/{_rom_name(task_id.split('/', 1)[1])}-v5"

    def env_version(self) -> str:
        from importlib.metadata import version

        return f"ale-py {version('ale-py')}"

    def make_single(self, task_id: str, seed: int) -> gym.Env:
        import ale_py
        from gymnasium.wrappers import AtariPreprocessing, FrameStackObservation

        gym.register_envs(ale_py)
        env = gym.make(self.env_id(task_id), frameskip=1, repeat_action_probability=0.25,
                       full_action_space=self.full_action_space, disable_env_checker=True)
        env = AtariPreprocessing(env, noop_max=30, frame_skip=4, screen_size=SCREEN, grayscale_obs=True)
        return FrameStackObservation(env, FRAME_STACK)

    def observation_spec(self, task_id: str) -> dict[str, ModalitySpec]:
        return {"obs_image": ModalitySpec(shape=[SCREEN, SCREEN, FRAME_STACK], dtype="uint8", low=0, high=255)}

    def action_spec(self, task_id: str) -> dict[str, ModalitySpec]:
        return {"act_discrete": ModalitySpec(shape=[1], dtype="int32", low=0, high=self.n_actions(task_id) - 1,
                                             n=self.n_actions(task_id))}

    def n_actions(self, task_id: str) -> int:
        if self.full_action_space:
            return 18
        if task_id not in self._n_actions:
            import ale_py

            ale = ale_py.ALEInterface()
            ale.setLoggerMode(ale_py.LoggerMode.Error)
            ale.loadROM(ale_py.roms.get_rom_path(_rom_id(task_id.split("/", 1)[1])))
            self._n_actions[task_id] = len(ale.getMinimalActionSet())
        return self._n_actions[task_id]

    def to_columns(self, obs_batch: Any) -> dict[str, np.ndarray]:
        frames = np.asarray(obs_batch, dtype=np.uint8)  # (N, 4, 84, 84)
        return {"obs_image": np.ascontiguousarray(frames.transpose(0, 2, 3, 1))}  # (N, 84, 84, 4)

    def action_columns(self, actions: Any) -> dict[str, np.ndarray]:
        return discrete_action_columns(actions)

    def extra(self, task_id: str) -> dict[str, Any]:
        return {"full_action_space": self.full_action_space, "frame_skip": 4, "sticky_action_p": 0.25,
                "noop_max": 30, "frame_stack": FRAME_STACK, "grayscale": True, "max_pool": True,
                "image_layout": "HWC, the 4 stacked frames as channels"}


def _rom_id(game: str) -> str:
    """``spaceinvaders`` -> ``space_invaders`` (ale-py's rom id)."""
    from ale_py import roms

    for rom in roms.get_all_rom_ids():
        if rom.replace("_", "") == game:
            return rom
    raise ValueError(f"atari/{game}: no ALE rom matches (roms: {roms.get_all_rom_ids()})")


def _rom_name(game: str) -> str:
    """``space_invaders`` -> ``SpaceInvaders`` (the Gymnasium id's spelling)."""
    return "".join(part.capitalize() for part in _rom_id(game).split("_"))
