// Validates the published API documents (CONTRACT.md section 12) with the
// tools their readers use: the OpenAPI document against the OpenAPI 3.1
// schema, the AsyncAPI document through @asyncapi/parser (with its
// validation rules). Errors, and parser warnings too, fail the run.
import { readFile } from "node:fs/promises";
import { fileURLToPath } from "node:url";
import { Validator } from "@seriousme/openapi-schema-validator";
import { Parser } from "@asyncapi/parser";

const api = new URL("../../protocol/api/", import.meta.url);
let failed = false;

const openapi = JSON.parse(await readFile(new URL("openapi.json", api), "utf8"));
const validator = new Validator();
const result = await validator.validate(openapi);
if (!result.valid || validator.version !== "3.1") {
  failed = true;
  console.error(`openapi.json: not a valid OpenAPI 3.1 document (version ${validator.version})`);
  console.error(JSON.stringify(result.errors, null, 2));
} else {
  console.log(`openapi.json: valid OpenAPI ${validator.version}`);
}

const asyncapiText = await readFile(new URL("asyncapi.json", api), "utf8");
const parser = new Parser();
const { document, diagnostics } = await parser.parse(asyncapiText, {
  source: fileURLToPath(new URL("asyncapi.json", api)),
});
// Severity 0 is an error, 1 a warning; hints (2, 3) are style advice.
const serious = diagnostics.filter((d) => d.severity <= 1);
if (!document || serious.length > 0) {
  failed = true;
  for (const d of serious) {
    console.error(`asyncapi.json: ${d.code}: ${d.message} at ${d.path.join(".")}`);
  }
} else {
  console.log(
    `asyncapi.json: parsed as AsyncAPI ${document.version()}, ${document.allMessages().length} messages`,
  );
}

process.exit(failed ? 1 : 0);
