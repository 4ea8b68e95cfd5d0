"""Console scripts: ``mooncake_master``, ``mooncake_client``,
``mooncake_http_metadata_server`` and ``mooncake`` (the operator's command), all
served by the package's one native library."""

import sys

from mooncake import _native


def _run(main):
    try:
        code = main([sys.argv[0]] + sys.argv[1:])
    except KeyboardInterrupt:
        code = 0
    sys.exit(code)


def master_main():
    """``mooncake_master`` (upstream's flags: ``--rpc_port``, ``--eviction_high_watermark_ratio``, ...)."""
    _run(_native.master_main)


def client_main():
    """``mooncake_client`` (``--global_segment_size``, ``--master_server_address``, ...)."""
    _run(_native.client_main)


def metadata_server_main():
    """``mooncake_http_metadata_server`` (``--host 0.0.0.0 --port 8080``)."""
    _run(_native.metadata_server_main)


def admin_main():
    """``mooncake`` (``status``, ``health``, ``keys``, ``query``, ``remove``, ``drain``,
    ``segments``; ``--json`` on each)."""
    _run(_native.admin_main)
