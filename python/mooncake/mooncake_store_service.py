"""``python -m mooncake.mooncake_store_service [--config=store.json] [--port=8080]``:
a store service that contributes ``global_segment_size`` bytes to the pool (a full
client in this process) and serves a small HTTP API for people and tools:

- ``PUT /api/put`` with JSON ``{"key": ..., "value": "<text>"}``
- ``GET /api/get/<key>`` → the bytes (404 when missing)
- ``GET /api/exist/<key>`` → ``{"exists": true|false}``
- ``DELETE /api/remove/<key>``, ``DELETE /api/remove_all`` (forced: an operator's
  delete does not wait for the read leases of recent gets to run out)
- ``GET /health``

Settings come from the JSON file, else from ``MOONCAKE_*`` environment variables;
``-Dkey=value`` overrides either.
"""

import argparse
import json
import logging
import signal
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from mooncake.mooncake_config import MooncakeConfig
from mooncake.store import MooncakeDistributedStore

log = logging.getLogger("mooncake_store_service")


def start_store(config, max_wait_time, stop_event):
    """Sets up a store, retrying once a second (the master may start later)."""
    deadline = time.monotonic() + max_wait_time
    attempt = 0
    while not stop_event.is_set():
        attempt += 1
        store = MooncakeDistributedStore()
        rc = store.setup(config.setup_dict())
        if rc == 0:
            log.info("store started on %s (segment %s bytes, master %s)",
                     config.local_hostname, config.global_segment_size,
                     config.master_server_address)
            return store
        store.close()
        if time.monotonic() >= deadline:
            log.error("store setup failed after %d attempts (last code %d)", attempt, rc)
            return None
        log.warning("store setup failed (code %d); retrying", rc)
        stop_event.wait(1.0)
    return None


def make_handler(store):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):
            log.debug("%s " + fmt, self.address_string(), *args)

        def _reply(self, status, body, content_type="application/json"):
            data = body if isinstance(body, (bytes, bytearray)) else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _key(self, prefix):
            return urllib.parse.unquote(self.path[len(prefix):].split("?", 1)[0])

        def do_GET(self):
            if self.path == "/health":
                ok = store.health_check() == 0
                return self._reply(200 if ok else 503, {"healthy": ok})
            if self.path.startswith("/api/get/"):
                key = self._key("/api/get/")
                exists = store.is_exist(key)
                if exists < 0:
                    return self._reply(500, {"error": f"exist check failed ({exists})"})
                if exists == 0:
                    return self._reply(404, {"error": "Key not found"})
                value = store.get_buffer(key)
                if value is None:
                    return self._reply(404, {"error": "Key not found"})
                return self._reply(200, bytes(value), "application/octet-stream")
            if self.path.startswith("/api/exist/"):
                exists = store.is_exist(self._key("/api/exist/"))
                if exists < 0:
                    return self._reply(500, {"error": f"exist check failed ({exists})"})
                return self._reply(200, {"exists": exists > 0})
            return self._reply(404, {"error": "no such endpoint"})

        def do_PUT(self):
            if self.path != "/api/put":
                return self._reply(404, {"error": "no such endpoint"})
            length = int(self.headers.get("Content-Length") or 0)
            try:
                data = json.loads(self.rfile.read(length) or b"{}")
            except ValueError:
                return self._reply(400, {"error": "body must be JSON"})
            key, value = data.get("key"), data.get("value")
            if not key or value is None:
                return self._reply(400, {"error": "Missing key or value"})
            rc = store.put(key, str(value).encode())
            if rc != 0:
                return self._reply(500, {"error": f"PUT failed ({rc})"})
            return self._reply(200, {"status": "success"})

        do_POST = do_PUT

        def do_DELETE(self):
            if self.path == "/api/remove_all":
                n = store.remove_all(force=True)
                if n < 0:
                    return self._reply(500, {"error": f"remove_all failed ({n})"})
                return self._reply(200, {"status": f"success removed {n} keys"})
            if self.path.startswith("/api/remove/"):
                rc = store.remove(self._key("/api/remove/"), force=True)
                if rc != 0:
                    return self._reply(500, {"error": f"remove failed ({rc})"})
                return self._reply(200, {"status": "success"})
            return self._reply(404, {"error": "no such endpoint"})

    return Handler


def main(argv=None):
    parser = argparse.ArgumentParser(description="Mooncake store service with a REST API")
    parser.add_argument("--config", help="JSON config file (else MOONCAKE_* variables)")
    parser.add_argument("-D", "--define", action="append", default=[],
                        help="override a setting: -Dlocal_hostname=node1")
    parser.add_argument("--port", type=int, default=8080, help="HTTP API port (default 8080)")
    parser.add_argument("--host", default="0.0.0.0", help="HTTP API address (default 0.0.0.0)")
    parser.add_argument("--max-wait-time", type=float, default=60.0,
                        help="seconds to keep retrying setup (default 60)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s - %(name)s - %(levelname)s - %(message)s")
    try:
        config = MooncakeConfig.from_file(args.config) if args.config else MooncakeConfig.load_from_env()
        overrides = {}
        for item in args.define:
            key, sep, value = item.partition("=")
            if sep:
                overrides[key] = value
        if overrides:
            merged = dict(vars(config))
            merged.update(overrides)
            config = MooncakeConfig.from_dict(merged)
    except (OSError, ValueError) as e:
        log.error("configuration: %s", e)
        return 2

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    store = start_store(config, args.max_wait_time, stop)
    if store is None:
        return 0 if stop.is_set() else 1
    try:
        server = ThreadingHTTPServer((args.host, args.port), make_handler(store))
    except OSError as e:
        log.error("cannot serve HTTP on %s:%d: %s", args.host, args.port, e)
        store.close()
        return 1
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    log.info("REST API started on port %d", server.server_address[1])
    log.info("Mooncake Store Service is running")
    while not stop.wait(0.5):
        pass
    log.info("shutting down")
    server.shutdown()
    store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
