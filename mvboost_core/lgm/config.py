"""LGM network configurations, with the reference option names (3DTopia/LGM ``core/options.py``).

Only the architecture fields change the network; the others (``output_size``, ``znear``, ``zfar``, ``num_views``)
are kept so a config round-trips with the reference ``Options`` JSON dumps. Fixed facts of the architecture that
no option can change live in :mod:`mvboost_core.lgm.network` (9 input / 14 output channels, 2 resnets per down
block and 3 per up block, residual scale sqrt(0.5), 16 heads, GroupNorm(32, eps 1e-5), SiLU, 4 views).

Known configs:

========  =================================  ==========  =====  ============================================
name      down_channels                      up blocks   splat  public checkpoint
========  =================================  ==========  =====  ============================================
big       64,128,256,512,1024,1024           5           128    ``model_fp16_fixrot.safetensors`` (376 keys)
default   64,128,256,512,1024,1024           4           64     reference name ``lrm`` (344 keys)
small     same as default                    4           64     --
tiny      32,64,128,256,512                  3           64     -- (244 keys)
micro     32,32,32,64,64 (input 64)          4           32     test-only (parity fixtures, 295 keys)
========  =================================  ==========  =====  ============================================
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

__all__ = ["LGMConfig", "CONFIGS", "get_config"]

T, F = True, False


@dataclass(frozen=True)
class LGMConfig:
    """Architecture + camera options of one LGM model (reference field names).

    ``up_attention`` may be longer than ``up_channels`` (the reference ``tiny`` option has a 4th, unused entry);
    only the first ``len(up_channels)`` entries are used.
    """

    input_size: int = 256
    down_channels: tuple[int, ...] = (64, 128, 256, 512, 1024, 1024)
    down_attention: tuple[bool, ...] = (F, F, F, T, T, T)
    mid_attention: bool = True
    up_channels: tuple[int, ...] = (1024, 1024, 512, 256)
    up_attention: tuple[bool, ...] = (T, T, T, F)
    splat_size: int = 64
    output_size: int = 256
    fovy: float = 49.1
    znear: float = 0.5
    zfar: float = 2.5
    num_views: int = 12
    num_input_views: int = 4
    cam_radius: float = 1.5
    name: str = "custom"

    def __post_init__(self) -> None:
        for f in ("down_channels", "down_attention", "up_channels", "up_attention"):
            object.__setattr__(self, f, tuple(getattr(self, f)))
        self.validate()

    # ------------------------------------------------------------------
    def validate(self) -> None:
        """Raise ``ValueError`` if the options cannot describe an LGM network."""
        d, u = self.down_channels, self.up_channels
        problems = []
        if len(d) < 2 or len(u) < 1:
            problems.append(f"need >= 2 down blocks and >= 1 up block, got {len(d)} and {len(u)}")
        if len(self.down_attention) != len(d):
            problems.append(f"down_attention has {len(self.down_attention)} entries for {len(d)} down blocks")
        if len(self.up_attention) < len(u):
            problems.append(f"up_attention has {len(self.up_attention)} entries for {len(u)} up blocks")
        if len(u) > len(d):
            problems.append(f"more up blocks ({len(u)}) than down blocks ({len(d)})")
        else:
            for i, c in enumerate(u):
                if c != d[-1 - i]:
                    problems.append(f"up_channels[{i}]={c} must equal down_channels[{-1 - i}]={d[-1 - i]}")
        for c in (*d, *u):
            if c % 32:
                problems.append(f"channel count {c} is not a multiple of 32 (GroupNorm(32))")
        if self.num_input_views != 4:
            problems.append(f"num_input_views must be 4 (the network hard-codes 4 views), got {self.num_input_views}")
        if not problems:
            expect = self.input_size * 2 ** (len(u) - 1) // 2 ** (len(d) - 1)
            if self.input_size % 2 ** (len(d) - 1) or expect != self.splat_size:
                problems.append(
                    f"splat_size={self.splat_size} inconsistent with input_size={self.input_size} and "
                    f"{len(d)} down / {len(u)} up blocks (expected {expect})"
                )
        if problems:
            raise ValueError("Invalid LGM config: " + "; ".join(problems))

    @property
    def num_gaussians(self) -> int:
        """Gaussians per sample: 4 views x splat_size^2."""
        return 4 * self.splat_size**2

    def architecture(self) -> tuple:
        """The fields that determine the state-dict keys and shapes."""
        n = len(self.up_channels)
        return (self.down_channels, self.down_attention, self.mid_attention, self.up_channels,
                self.up_attention[:n])

    def replace(self, **changes) -> "LGMConfig":
        return replace(self, **changes)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_options(cls, options: dict | str | Path, name: str = "custom") -> "LGMConfig":
        """Build from a reference ``Options`` dict or JSON file (unknown fields such as ``lr`` are ignored)."""
        if not isinstance(options, dict):
            options = json.loads(Path(options).read_text())
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in options.items() if k in known}
        kw.setdefault("name", name)
        return cls(**kw)


CONFIGS: dict[str, LGMConfig] = {
    "default": LGMConfig(name="default"),
    "small": LGMConfig(name="small", num_views=12),
    "big": LGMConfig(
        name="big",
        up_channels=(1024, 1024, 512, 256, 128),
        up_attention=(T, T, T, F, F),
        splat_size=128,
        output_size=512,
        num_views=8,
    ),
    "tiny": LGMConfig(
        name="tiny",
        down_channels=(32, 64, 128, 256, 512),
        down_attention=(F, F, F, F, T),
        up_channels=(512, 256, 128),
        up_attention=(T, F, F, F),
        splat_size=64,
        num_views=8,
    ),
    # Test-only config of the parity fixtures (../shared/fixtures/lgm/options_micro.json).
    "micro": LGMConfig(
        name="micro",
        input_size=64,
        down_channels=(32, 32, 32, 64, 64),
        down_attention=(F, F, F, T, T),
        up_channels=(64, 64, 32, 32),
        up_attention=(T, T, F, F),
        splat_size=32,
        output_size=128,
        num_views=8,
    ),
}
CONFIGS["lrm"] = CONFIGS["default"].replace(name="lrm")  # the reference's name for Options() defaults


def get_config(config: "str | LGMConfig | dict") -> LGMConfig:
    """Resolve a config name (``big``, ``default``/``lrm``, ``small``, ``tiny``, ``micro``), dict or instance."""
    if isinstance(config, LGMConfig):
        return config
    if isinstance(config, dict):
        return LGMConfig.from_options(config)
    if isinstance(config, (str, Path)) and str(config).endswith(".json"):
        return LGMConfig.from_options(config, name=Path(config).stem)
    try:
        return CONFIGS[str(config)]
    except KeyError:
        raise ValueError(f"Unknown LGM config {config!r}; choose one of {sorted(CONFIGS)} or pass an LGMConfig") from None
