// A Node HTTP agent (standard library plus one dependency, installed by the
// build): GET /health, POST /invoke → {"output": {"is_number": …, "dev": …}}.
const http = require("http");
const isNumber = require("is-number");

let devInstalled = true;
try {
  require.resolve("left-pad");
} catch {
  devInstalled = false;
}

const server = http.createServer((req, res) => {
  if (req.method === "GET" && req.url === "/health") {
    res.writeHead(200, { "content-type": "application/json" });
    return res.end('{"status":"ok"}');
  }
  if (req.method === "POST" && req.url === "/invoke") {
    let body = "";
    req.on("data", (chunk) => (body += chunk));
    req.on("end", () => {
      const input = JSON.parse(body || "null");
      console.log(`INFO invoked with ${JSON.stringify(input)}`);
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify({ output: { is_number: isNumber(input && input.value), dev: devInstalled } }));
    });
    return;
  }
  res.writeHead(404);
  res.end();
});

const port = Number(process.env.PORT || 8080);
server.listen(port, "0.0.0.0", () => console.log(`INFO listening on ${port}`));
