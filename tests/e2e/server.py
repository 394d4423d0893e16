#!/usr/bin/env python3
"""A real server for the end-to-end tests: HTTP on port 80 and a UDP echo on port 53.

GET /name            -> this server's name
GET /blob?size=N     -> N bytes of a deterministic stream (sha256 checkable by the client)
POST /upload         -> "name sha256hex length" of the request body
UDP 53               -> "name:" + datagram
(HTTP on port 443 too, plain, for the fwmark tests.)

Usage: server.py NAME  (binds [::] dual-stack). Runs until killed.
"""
import hashlib
import http.server
import socket
import socketserver
import sys
import threading

from xvsblob import blob

NAME = sys.argv[1]


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, body, ctype="text/plain"):
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Server", NAME)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path.startswith("/blob?size="):
            self.reply(blob(int(self.path.split("=", 1)[1])), "application/octet-stream")
        else:
            self.reply((NAME + "\n").encode())

    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        h = hashlib.sha256()
        left = n
        while left > 0:
            chunk = self.rfile.read(min(left, 65536))
            if not chunk:
                break
            h.update(chunk)
            left -= len(chunk)
        self.reply(f"{NAME} {h.hexdigest()} {n - left}\n".encode())


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    address_family = socket.AF_INET6
    daemon_threads = True
    allow_reuse_address = True

    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


def udp_echo():
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", 53))
    while True:
        data, addr = s.recvfrom(65535)
        s.sendto(NAME.encode() + b":" + data, addr)


threading.Thread(target=udp_echo, daemon=True).start()
# Port 443 as well (plain HTTP): the fwmark tests group 80 and 443 of a VIP into one service.
threading.Thread(target=Server(("::", 443), Handler).serve_forever, daemon=True).start()
Server(("::", 80), Handler).serve_forever()
