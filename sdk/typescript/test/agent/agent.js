// The agent the TypeScript client's tests deploy (Node, standard library
// only). POST /invoke with a JSON object input:
//   {"n": 21}                      answers {"output": {"n": 21, "doubled": 42}}
//   {"text": "a b", "stream": true} streams the words as SSE, then usage
//   {"sleep": 30}                  answers after that many seconds
//   {"log": ["x", "y"]}            prints each as an INFO line first
//   {"fail": true}                 answers 500
const http = require("http");

function reply(res, status, body) {
  const data = JSON.stringify(body);
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(data) });
  res.end(data);
}

const server = http.createServer((req, res) => {
  if (req.method === "GET" && req.url === "/health") return reply(res, 200, { status: "ok" });
  if (req.method !== "POST" || req.url !== "/invoke") return reply(res, 404, { error: "not found" });
  let raw = "";
  req.on("data", (chunk) => (raw += chunk));
  req.on("end", () => {
    const input = JSON.parse(raw || "{}") || {};
    for (const line of input.log || []) console.log(`INFO ${line}`);
    if (input.fail) return reply(res, 500, { error: "asked to fail" });
    if (input.stream) {
      const words = String(input.text || "").split(/\s+/).filter(Boolean);
      res.writeHead(200, { "content-type": "text/event-stream" });
      for (const word of words) res.write(`data: ${JSON.stringify({ content: word })}\n\n`);
      res.write(`data: ${JSON.stringify({ usage: { words: words.length } })}\n\n`);
      return res.end("data: [DONE]\n\n");
    }
    const answer = () => reply(res, 200, { output: { n: input.n, doubled: (input.n || 0) * 2 }, usage: { calls: 1 } });
    if (input.sleep) {
      const timer = setTimeout(answer, input.sleep * 1000);
      res.on("close", () => clearTimeout(timer));
      return;
    }
    answer();
  });
});

const port = Number(process.env.PORT || 8080);
server.listen(port, "0.0.0.0", () => console.log(`INFO listening on ${port}`));
process.on("SIGTERM", () => process.exit(0));
