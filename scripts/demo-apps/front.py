"""Demo front service (Python stdlib): GET /<item> calls the Node middle service. It serves HTTPS
when TLS_CERT and TLS_KEY name a certificate and its key."""
import http.server
import os
import ssl
import sys
import urllib.request

PORT, MIDDLE = int(sys.argv[1]), sys.argv[2]


class Front(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        with urllib.request.urlopen(f"{MIDDLE}/price?item={self.path.strip('/')}") as r:
            body = r.read()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


server = http.server.ThreadingHTTPServer(("127.0.0.1", PORT), Front)
if os.environ.get("TLS_CERT"):
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(os.environ["TLS_CERT"], os.environ["TLS_KEY"])
    server.socket = tls.wrap_socket(server.socket, server_side=True)
server.serve_forever()
