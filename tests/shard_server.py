"""A small HTTP file server for the remote-shard tests, run as a subprocess:

    python shard_server.py DIR [--missing NAME] [--drop NAME] [--drop-once NAME] [--drip NAME] [--endless NAME]

prints its port on the first line of stdout, then serves DIR. --missing answers 404 for NAME, --drop
sends NAME's full Content-Length but only half of its bytes and closes the connection (every time),
--drop-once does that on the first request only (a retry gets the whole file), --drip sends NAME one byte
every 2 s, --endless answers NAME with a body that never ends."""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer


class Handler(SimpleHTTPRequestHandler):
    missing: set[str] = set()
    drop: set[str] = set()
    drop_once: set[str] = set()
    drip: set[str] = set()
    endless: set[str] = set()

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        name = os.path.basename(self.path)
        if name in self.missing:
            self.send_error(404)
            return
        if name in self.drip or name in self.endless:
            data = open(os.path.join(self.directory, name), "rb").read() if name in self.drip else b""
            self.send_response(200)
            if data:
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            try:
                if data:
                    for byte in data:
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                        time.sleep(2)
                while not data:
                    self.wfile.write(b"\0" * 65536)
            except OSError:  # the client gave up
                pass
            self.close_connection = True
            return
        if name in self.drop or name in self.drop_once:
            self.drop_once.discard(name)
            data = open(os.path.join(self.directory, name), "rb").read()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[:len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        super().do_GET()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("directory")
    for flag in ("missing", "drop", "drop-once", "drip", "endless"):
        parser.add_argument(f"--{flag}", action="append", default=[])
    args = parser.parse_args()
    Handler.missing, Handler.drop, Handler.drop_once = set(args.missing), set(args.drop), set(args.drop_once)
    Handler.drip, Handler.endless = set(args.drip), set(args.endless)
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=args.directory))
    print(server.server_address[1], flush=True)
    sys.stdout.close()
    server.serve_forever()


if __name__ == "__main__":
    main()
