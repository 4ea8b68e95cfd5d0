"""``python -m mooncake.http_metadata_server [--host 0.0.0.0] [--port 8080]``:
upstream's standalone HTTP metadata server (``GET/PUT/DELETE /metadata?key=``,
``GET /health``)."""

from mooncake.cli import metadata_server_main

if __name__ == "__main__":
    metadata_server_main()
