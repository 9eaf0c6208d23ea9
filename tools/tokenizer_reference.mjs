#!/usr/bin/env node
// Reference ids and decoded text from Hugging Face's tokenizers.js (@huggingface/tokenizers),
// an implementation independent of ours.
//
// usage: node tools/tokenizer_reference.mjs <tokenizer_dir> <corpus.json> <out.json>
//
// corpus.json: [{"text": s} | {"bytes_b64": b64}, ...]; bytes are read as UTF-8 with U+FFFD
// for ill-formed subparts (Buffer#toString follows the WHATWG decoder, the same rule as
// Python's errors="replace"). out.json: [{"text", "ids", "ids_no_special", "decoded",
// "decoded_skip"}, ...] in corpus order. decode runs with clean_up_tokenization_spaces=false:
// transformers no longer applies that clean-up to BPE tokenizers.
//
// The package is resolved from $XY_SOURCE_DIR/node_modules (default: this repo).
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { createRequire } from "node:module";

const [dir, corpusPath, outPath] = process.argv.slice(2);
if (!dir || !corpusPath || !outPath) {
  console.error("usage: tokenizer_reference.mjs <tokenizer_dir> <corpus.json> <out.json>");
  process.exit(2);
}
const sourceDir =
  process.env.XY_SOURCE_DIR || path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
let Tokenizer;
try {
  const require = createRequire(path.join(sourceDir, "package.json"));
  const cjsEntry = require.resolve("@huggingface/tokenizers");
  const esmEntry = path.join(path.dirname(cjsEntry), "tokenizers.mjs");
  ({ Tokenizer } = await import(pathToFileURL(fs.existsSync(esmEntry) ? esmEntry : cjsEntry).href));
} catch (e) {
  console.error(`cannot load @huggingface/tokenizers from ${sourceDir}/node_modules ` +
                `(run npm ci in ${sourceDir}): ${e.message}`);
  process.exit(3);
}

const readJson = (p) => JSON.parse(fs.readFileSync(p, "utf8"));
const tokenizerJson = readJson(path.join(dir, "tokenizer.json"));
const configPath = path.join(dir, "tokenizer_config.json");
const config = fs.existsSync(configPath) ? readJson(configPath) : {};
const tokenizer = new Tokenizer(tokenizerJson, config);

const corpus = readJson(corpusPath);
const out = corpus.map((entry) => {
  const text = entry.bytes_b64 !== undefined
    ? Buffer.from(entry.bytes_b64, "base64").toString("utf8")
    : entry.text;
  const ids = Array.from(tokenizer.encode(text).ids, Number);
  const idsNoSpecial = Array.from(tokenizer.encode(text, { add_special_tokens: false }).ids, Number);
  const opts = { clean_up_tokenization_spaces: false };
  // tokenizers.js refuses an empty id list; the text of no tokens is "".
  const decode = (xs, o) => (xs.length === 0 ? "" : tokenizer.decode(xs, o));
  return {
    text,
    ids,
    ids_no_special: idsNoSpecial,
    decoded: decode(ids, { ...opts, skip_special_tokens: false }),
    decoded_skip: decode(ids, { ...opts, skip_special_tokens: true }),
  };
});
fs.writeFileSync(outPath, JSON.stringify(out));
