// Renders /openapi.json as a plain list of endpoints: method, path, summary, request and response types.
"use strict";

function el(tag, text, cls) { const e = document.createElement(tag); if (text) e.textContent = text; if (cls) e.className = cls; return e; }

function schemaText(schema, spec, depth = 0) {
  if (!schema) return "";
  if (schema.$ref) {
    const name = schema.$ref.split("/").pop();
    return depth > 1 ? name : name + " " + schemaText(spec.components.schemas[name], spec, depth + 1);
  }
  if (schema.properties) {
    const req = new Set(schema.required || []);
    return "{" + Object.entries(schema.properties).map(([k, v]) =>
      `${k}${req.has(k) ? "" : "?"}: ${v.type || (v.anyOf ? v.anyOf.map((x) => x.type || "object").join("|") : "object")}`).join(", ") + "}";
  }
  return schema.type || "";
}

fetch("/openapi.json").then((r) => r.json()).then((spec) => {
  const root = document.getElementById("api");
  for (const [path, methods] of Object.entries(spec.paths)) {
    for (const [method, op] of Object.entries(methods)) {
      const sec = el("section");
      sec.append(el("h3", `${method.toUpperCase()} ${path}`), el("p", op.summary || ""));
      const body = op.requestBody && op.requestBody.content;
      if (body) for (const [type, c] of Object.entries(body)) sec.append(el("p", `request ${type}: ${schemaText(c.schema, spec)}`));
      for (const [code, r] of Object.entries(op.responses || {})) {
        const c = r.content && r.content["application/json"];
        sec.append(el("p", `${code} ${r.description || ""}: ${c ? schemaText(c.schema, spec) : ""}`));
      }
      root.append(sec);
    }
  }
});
