"""mooncake-rs: a drop-in ``mooncake`` package (``mooncake.store``) backed by Rust.

``from mooncake.store import MooncakeDistributedStore`` works as with upstream's
wheel; the two cannot be installed side by side (same module names).
"""

from pkgutil import extend_path

__path__ = extend_path(__path__, __name__)  # type: ignore[name-defined]

from mooncake._native import __version__  # noqa: E402,F401
