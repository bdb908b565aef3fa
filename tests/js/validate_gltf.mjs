// Usage: node validate_gltf.mjs FILE.glb  -> prints the Khronos glTF validator report (JSON) on stdout.
import { readFileSync } from "node:fs";
import validator from "gltf-validator";

const data = new Uint8Array(readFileSync(process.argv[2]));
const report = await validator.validateBytes(data, { maxIssues: 100 });
console.log(JSON.stringify(report));
