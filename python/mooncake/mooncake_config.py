"""``MooncakeConfig``: the store settings upstream's tools read from a JSON file or
from ``MOONCAKE_*`` environment variables."""

import json
import os
from dataclasses import dataclass

_DEFAULT_SEGMENT = 3355443200
_DEFAULT_LOCAL_BUFFER = 1073741824


def parse_size(value):
    """Bytes from an int or a string such as ``"4gb"``, ``"512 MB"``, ``"1073741824"``."""
    if isinstance(value, bool):
        raise ValueError(f"not a size: {value!r}")
    if isinstance(value, int):
        return value
    text = str(value).strip().lower().replace(" ", "")
    units = {"tb": 1 << 40, "gb": 1 << 30, "mb": 1 << 20, "kb": 1 << 10,
             "t": 1 << 40, "g": 1 << 30, "m": 1 << 20, "k": 1 << 10, "b": 1}
    for suffix, factor in units.items():
        if text.endswith(suffix) and text[: -len(suffix)]:
            return int(float(text[: -len(suffix)]) * factor)
    return int(text)


@dataclass
class MooncakeConfig:
    """Settings of a store client (upstream's field names)."""

    local_hostname: str = "localhost"
    metadata_server: str = "P2PHANDSHAKE"
    global_segment_size: int = _DEFAULT_SEGMENT
    local_buffer_size: int = _DEFAULT_LOCAL_BUFFER
    protocol: str = "tcp"
    device_name: str = ""
    master_server_address: str = "127.0.0.1:50051"
    enable_ssd_offload: bool = False
    ssd_offload_path: str = ""
    tenant_id: str = "default"
    enable_client_http_server: bool = False
    client_http_port: int = 9300

    @staticmethod
    def from_file(path):
        """Reads a JSON file; ``master_server_address`` is required."""
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if not data.get("master_server_address"):
            raise ValueError(f"{path}: master_server_address is required")
        return MooncakeConfig.from_dict(data)

    @staticmethod
    def from_dict(data):
        """Builds a config from a dict (unknown keys ignored)."""
        cfg = MooncakeConfig()
        for key, value in data.items():
            if value is None or not hasattr(cfg, key):
                continue
            setattr(cfg, key, value)
        cfg.global_segment_size = parse_size(cfg.global_segment_size)
        cfg.local_buffer_size = parse_size(cfg.local_buffer_size)
        return cfg

    @staticmethod
    def load_from_env():
        """Reads ``MOONCAKE_*`` variables; ``MOONCAKE_MASTER`` is required."""
        env = os.environ
        if not env.get("MOONCAKE_MASTER"):
            raise ValueError("MOONCAKE_MASTER is not set")
        return MooncakeConfig.from_dict({
            "local_hostname": env.get("MOONCAKE_LOCAL_HOSTNAME", env.get("LOCAL_HOSTNAME", "localhost")),
            "metadata_server": env.get("MOONCAKE_TE_META_DATA_SERVER", "P2PHANDSHAKE"),
            "master_server_address": env["MOONCAKE_MASTER"],
            "protocol": env.get("MOONCAKE_PROTOCOL", "tcp"),
            "device_name": env.get("MOONCAKE_DEVICE", ""),
            "global_segment_size": env.get("MOONCAKE_GLOBAL_SEGMENT_SIZE", _DEFAULT_SEGMENT),
            "local_buffer_size": env.get("MOONCAKE_LOCAL_BUFFER_SIZE", _DEFAULT_LOCAL_BUFFER),
        })

    def setup_dict(self):
        """The dict ``MooncakeDistributedStore.setup`` takes (all values strings)."""
        return {
            "local_hostname": str(self.local_hostname),
            "metadata_server": str(self.metadata_server),
            "global_segment_size": str(self.global_segment_size),
            "local_buffer_size": str(self.local_buffer_size),
            "protocol": str(self.protocol),
            "rdma_devices": str(self.device_name),
            "master_server_addr": str(self.master_server_address),
            "enable_ssd_offload": str(self.enable_ssd_offload).lower(),
            "ssd_offload_path": str(self.ssd_offload_path),
            "tenant_id": str(self.tenant_id),
            "enable_client_http_server": str(self.enable_client_http_server).lower(),
            "client_http_port": str(self.client_http_port),
        }
