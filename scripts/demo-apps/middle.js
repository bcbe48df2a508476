// Demo middle service (Node core http): /price asks the Python back service for stock.
const http = require('http');
const [port, back] = [Number(process.argv[2]), process.argv[3]];
http.createServer((req, res) => {
  http.get(`${back}/stock`, (r) => {
    let data = '';
    r.on('data', (c) => { data += c; });
    r.on('end', () => {
      const body = JSON.stringify({ price: 42, stock: data.trim() }) + '\n';
      res.writeHead(200, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) });
      res.end(body);
    });
  }).on('error', () => { res.writeHead(502); res.end(); });
}).listen(port, '127.0.0.1');
