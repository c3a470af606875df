// Validates custom resources against their CRDs' OpenAPI schemas (the @kubernetes-models packages).
// stdin: a JSON list of objects; stdout: a JSON list of {kind, name, error|null}, one per object.
import { readFileSync } from "node:fs";

const modules = {
  "keda.sh/v1alpha1": "@kubernetes-models/keda/keda.sh/v1alpha1",
  "karpenter.sh/v1": "@kubernetes-models/karpenter/karpenter.sh/v1",
  "karpenter.k8s.aws/v1": "@kubernetes-models/karpenter/karpenter.k8s.aws/v1",
  "monitoring.coreos.com/v1": "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1",
};

const objects = JSON.parse(readFileSync(0, "utf8"));
const results = [];
for (const obj of objects) {
  const entry = { kind: obj.kind, name: obj.metadata?.name, error: null };
  const module = modules[obj.apiVersion];
  if (!module) {
    entry.error = `no schema package for ${obj.apiVersion}`;
  } else {
    const Model = (await import(module))[obj.kind];
    if (!Model) {
      entry.error = `${module} has no ${obj.kind}`;
    } else {
      try {
        new Model(obj).validate();
      } catch (err) {
        entry.error = String(err.message || err);
      }
    }
  }
  results.push(entry);
}
process.stdout.write(JSON.stringify(results));
