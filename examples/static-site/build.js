// Renders src/*.html into dist/ with a shared header and a build stamp.
const fs = require("fs");
const path = require("path");

const src = path.join(__dirname, "src");
const out = path.join(__dirname, "dist");
fs.rmSync(out, { recursive: true, force: true });
fs.mkdirSync(out, { recursive: true });
const header = "<header><a href=\"index.html\">kiln example</a></header>";
let pages = 0;
for (const name of fs.readdirSync(src).sort()) {
  if (!name.endsWith(".html")) continue;
  const body = fs.readFileSync(path.join(src, name), "utf8");
  fs.writeFileSync(path.join(out, name), `<!doctype html>\n<html><body>${header}\n${body}</body></html>\n`);
  pages += 1;
}
fs.copyFileSync(path.join(src, "style.css"), path.join(out, "style.css"));
console.log(`built ${pages} pages into dist/`);
