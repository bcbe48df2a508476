"""Demo front service (Python stdlib): GET /checkout calls the Node middle service."""
import http.server
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


http.server.ThreadingHTTPServer(("127.0.0.1", PORT), Front).serve_forever()
