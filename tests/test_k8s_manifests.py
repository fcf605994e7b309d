"""The Kubernetes manifests: every overlay renders, is valid for the API (kubernetes-validate,
strict), passes checkov, runs its pods under Pod Security "restricted", fences them with
NetworkPolicies, and agrees with the images, the server and the training entry point."""

from __future__ import annotations

import copy
import math
import re
import tomllib
from urllib.parse import urlparse

import pytest

from components.config import PROJECT_ROOT
from tests.k8s_support import (
    K8S,
    OVERLAYS,
    WORKLOAD_KINDS,
    config_data,
    containers,
    kubernetes_validate,
    of_kind,
    one,
    pod_template,
    render,
    run_checkov,
    selects,
    write_manifests,
)

# The oldest Kubernetes the manifests support (podFailurePolicy and the preStop sleep
# action are GA or on by default from 1.31), and the newest schema kubernetes-validate has.
KUBERNETES_VERSIONS = ("1.31.0", "latest")
# checkov checks the manifests fail on purpose, and why.
CHECKOV_ACCEPTED = {
    "CKV_K8S_43": "images are pinned by version tag through kustomize `images:`; a release "
                  "may pin digests there (`digest:`)",
    "CKV_K8S_15": "IfNotPresent is right for immutable version tags",
    "CKV_K8S_35": "the server reads its bearer token from $TUNELINE_API_TOKEN",
}
# What Pod Security "restricted" (and the baseline under it) asks, as checkov checks.
RESTRICTED_CHECKS = {
    "CKV_K8S_16": "not privileged", "CKV_K8S_17": "no host PID", "CKV_K8S_18": "no host IPC",
    "CKV_K8S_19": "no host network", "CKV_K8S_20": "no privilege escalation",
    "CKV_K8S_23": "not root", "CKV_K8S_25": "no added capability",
    "CKV_K8S_28": "no NET_RAW", "CKV_K8S_31": "seccomp RuntimeDefault",
    "CKV_K8S_37": "capabilities dropped", "CKV_K8S_38": "no service account token",
    "CKV_K8S_22": "read-only root filesystem", "CKV_K8S_14": "no :latest image",
}
# Volume types Pod Security "restricted" admits.
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                      "persistentVolumeClaim", "projected", "secret"}
# Which Dockerfile builds which image.
DOCKERFILES = {"tuneline-serve": "deploy/Dockerfile", "tuneline-train": "deploy/Dockerfile.train"}
SERVE_PORT = 8000


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request) -> tuple[str, list[dict]]:
    return request.param, render(request.param)


@pytest.fixture(scope="module")
def checkov_report(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("rendered")
    for name in OVERLAYS:
        write_manifests(render(name), folder / f"{name}.yaml")
    return run_checkov(folder)


def workloads(docs: list[dict]) -> list[dict]:
    return [d for d in docs if d["kind"] in WORKLOAD_KINDS]


def test_every_object_is_valid_for_the_api(overlay):
    _, docs = overlay
    kv = kubernetes_validate()
    versions = [kv.utils.latest_version() if v == "latest" else v for v in KUBERNETES_VERSIONS]
    assert {d["kind"] for d in docs} >= {"Namespace", "ServiceAccount", "Deployment", "Service",
                                         "PodDisruptionBudget", "HorizontalPodAutoscaler",
                                         "Job", "NetworkPolicy", "ConfigMap"}
    for doc in docs:
        for version in versions:
            kv.validate(doc, version, strict=True)  # raises, naming the field


def test_validation_rejects_a_misspelt_field(overlay):
    _, docs = overlay
    kv = kubernetes_validate()
    job = copy.deepcopy(one(docs, "Job", "tuneline-train"))
    job["spec"]["activeDeadlineSecond"] = 60
    with pytest.raises(kv.ValidationError):
        kv.validate(job, kv.utils.latest_version(), strict=True)


def test_checkov_finds_nothing_but_the_accepted(checkov_report):
    assert checkov_report["summary"]["parsing_errors"] == 0
    failed = {(c["check_id"], c["resource"]) for c in checkov_report["results"]["failed_checks"]
              if c["check_id"] not in CHECKOV_ACCEPTED}
    assert failed == set()
    passed = {(c["check_id"], c["resource"]) for c in checkov_report["results"]["passed_checks"]}
    for name in OVERLAYS:
        namespace = one_namespace(render(name))
        for workload in (f"Deployment.{namespace}.tuneline-serve",
                         f"Job.{namespace}.tuneline-train"):
            for check, what in RESTRICTED_CHECKS.items():
                assert (check, workload) in passed, f"{workload}: {check} ({what}) not passed"


def test_checkov_flags_a_privileged_pod(tmp_path):
    docs = render("prod")
    pod = pod_template(one(docs, "Deployment", "tuneline-serve"))["spec"]
    pod["securityContext"].update(runAsNonRoot=False, runAsUser=0)
    pod["containers"][0]["securityContext"].update(allowPrivilegeEscalation=True,
                                                   runAsNonRoot=False)
    report = run_checkov(write_manifests(docs, tmp_path / "bad" / "prod.yaml").parent,
                         skip=CHECKOV_ACCEPTED)
    failed = {c["check_id"] for c in report["results"]["failed_checks"]}
    assert {"CKV_K8S_20", "CKV_K8S_23"} <= failed


def one_namespace(docs: list[dict]) -> str:
    namespaces = of_kind(docs, "Namespace")
    assert len(namespaces) == 1
    return namespaces[0]["metadata"]["name"]


def test_namespace_enforces_restricted_and_holds_everything(overlay):
    _, docs = overlay
    namespace = one_namespace(docs)
    labels = one(docs, "Namespace", namespace)["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    assert all(d["metadata"].get("namespace") == namespace
               for d in docs if d["kind"] != "Namespace")


def test_every_pod_has_the_restricted_security_context(overlay):
    _, docs = overlay
    accounts = {d["metadata"]["name"]: d for d in of_kind(docs, "ServiceAccount")}
    assert len(workloads(docs)) == 2
    for workload in workloads(docs):
        spec = pod_template(workload)["spec"]
        where = f"{workload['kind']}/{workload['metadata']['name']}"
        pod_sc = spec["securityContext"]
        assert pod_sc["runAsNonRoot"] is True, where
        assert pod_sc["runAsUser"] > 0 and pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}
        assert not any(spec.get(k) for k in ("hostNetwork", "hostPID", "hostIPC")), where
        assert spec["automountServiceAccountToken"] is False, where
        assert accounts[spec["serviceAccountName"]]["automountServiceAccountToken"] is False
        for volume in spec.get("volumes", []):
            assert set(volume) - {"name"} <= RESTRICTED_VOLUMES, f"{where}: {volume}"
        for c in containers(spec):
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["capabilities"] == {"drop": ["ALL"]}, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc.get("privileged") is not True and sc.get("runAsUser", 1) != 0, where
            assert sc.get("seccompProfile", pod_sc["seccompProfile"])["type"] == "RuntimeDefault"
            # A read-only root needs somewhere to write: /tmp is an emptyDir.
            mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
            emptydirs = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
            assert mounts.get("/tmp") in emptydirs, f"{where}: /tmp is not an emptyDir"


def dockerfile_user(image: str) -> int:
    text = (PROJECT_ROOT / DOCKERFILES[image]).read_text()
    uid = int(re.search(r"useradd --uid (\d+)", text).group(1))
    assert re.search(rf"^USER {uid}$", text, re.M), f"{DOCKERFILES[image]} does not run as {uid}"
    return uid


def test_images_are_versioned_and_run_as_their_dockerfile_user(overlay):
    name, docs = overlay
    version = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["version"]
    for workload in workloads(docs):
        spec = pod_template(workload)["spec"]
        for c in containers(spec):
            image, _, tag = c["image"].rpartition(":")
            assert image and tag and tag != "latest" and "/" not in tag, c["image"]
            assert re.fullmatch(r"\d+\.\d+\.\d+(-[\w.]+)?", tag), c["image"]
            if name == "prod":
                assert tag == version, f"prod runs {c['image']}, the project is {version}"
            base = image.rsplit("/", 1)[-1]
            assert spec["securityContext"]["runAsUser"] == dockerfile_user(base)


def ports_of(policy_rule: dict) -> set[int]:
    return {p["port"] for p in policy_rule.get("ports", [])}


def rules_for(docs: list[dict], labels: dict, kind: str) -> list[dict]:
    """The ingress or egress rules of every policy that selects pods with `labels`."""
    return [rule for p in of_kind(docs, "NetworkPolicy")
            if selects(p["spec"]["podSelector"], labels) and kind in p["spec"]["policyTypes"]
            for rule in p["spec"].get(kind.lower(), [])]


def test_network_policies_fence_serving_and_training(overlay):
    _, docs = overlay
    assert any(p["spec"]["podSelector"] == {} and set(p["spec"]["policyTypes"]) ==
               {"Ingress", "Egress"} and not p["spec"].get("ingress") and
               not p["spec"].get("egress") for p in of_kind(docs, "NetworkPolicy")), \
        "no default-deny policy"
    mlflow = urlparse(config_data(docs, "tuneline-mlflow")["MLFLOW_TRACKING_URI"])
    mlflow_namespace = mlflow.hostname.split(".")[1]  # <service>.<namespace>.svc...
    serve = pod_template(one(docs, "Deployment", "tuneline-serve"))["metadata"]["labels"]
    train = pod_template(one(docs, "Job", "tuneline-train"))["metadata"]["labels"]

    # Serving: ingress on its port only (from anywhere), nothing else.
    ingress = rules_for(docs, serve, "Ingress")
    assert ingress and all(ports_of(r) == {SERVE_PORT} for r in ingress)
    # Training: ingress from the other ranks only, on any port (gloo's are ephemeral).
    ingress = rules_for(docs, train, "Ingress")
    assert ingress and all(r["from"] == [{"podSelector": {"matchLabels": train}}]
                           for r in ingress)
    # Egress: DNS, MLflow, and for training the other ranks.
    for labels, peers in ((serve, []), (train, [{"podSelector": {"matchLabels": train}}])):
        egress = rules_for(docs, labels, "Egress")
        for rule in egress:
            to_mlflow = rule["to"] == [{"namespaceSelector": {"matchLabels": {
                "kubernetes.io/metadata.name": mlflow_namespace}}}]
            if to_mlflow:
                assert ports_of(rule) == {mlflow.port}
            else:
                assert ports_of(rule) == {53} or rule["to"] == peers, rule
        assert any(ports_of(r) == {mlflow.port} for r in egress), "no egress to MLflow"
        assert any(ports_of(r) == {53} for r in egress), "no egress to DNS"
        assert not peers or any(r["to"] == peers for r in egress), "ranks cannot reach each other"


def test_serving_probes_token_and_port_agree_with_the_server(overlay):
    _, docs = overlay
    app_source = (PROJECT_ROOT / "deploy" / "serve" / "app.py").read_text()
    dockerfile = (PROJECT_ROOT / "deploy" / "Dockerfile").read_text()
    deployment = one(docs, "Deployment", "tuneline-serve")
    pod = pod_template(deployment)
    (serve,) = pod["spec"]["containers"]
    assert serve["ports"] == [{"name": "http", "containerPort": SERVE_PORT}]
    assert f'"--port", "{SERVE_PORT}"' in dockerfile and f"EXPOSE {SERVE_PORT}" in dockerfile
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(SERVE_PORT)
    for probe, path in (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"),
                        ("readinessProbe", "/readyz")):
        assert serve[probe]["httpGet"] == {"path": path, "port": "http"}
        assert f'@app.get("{path}")' in app_source
    token = next(e for e in serve["env"] if e["name"] == "TUNELINE_API_TOKEN")
    assert token["valueFrom"]["secretKeyRef"] == {"name": "tuneline-api", "key": "token"}
    # ONNX Runtime threads = the CPU limit: more threads than cores get throttled.
    args = serve["args"]
    overrides = dict(args[i + 1].split("=", 1) for i, a in enumerate(args) if a == "--set")
    assert int(overrides["serve.threads"]) == math.ceil(_cores(serve["resources"]["limits"]["cpu"]))
    # Availability: a disruption budget, spread over nodes, the HPA starting at replicas.
    pdb = one(docs, "PodDisruptionBudget", "tuneline-serve")
    assert selects(pdb["spec"]["selector"], pod["metadata"]["labels"])
    assert {c["topologyKey"] for c in pod["spec"]["topologySpreadConstraints"]} >= {
        "kubernetes.io/hostname"}
    hpa = one(docs, "HorizontalPodAutoscaler", "tuneline-serve")
    assert hpa["spec"]["minReplicas"] == deployment["spec"]["replicas"]


def _cores(cpu: str) -> float:
    return int(cpu[:-1]) / 1000 if cpu.endswith("m") else float(cpu)


def test_training_job_is_an_indexed_job_of_ranks(overlay):
    _, docs = overlay
    job = one(docs, "Job", "tuneline-train")
    spec, pod = job["spec"], pod_template(job)["spec"]
    env = config_data(docs, "tuneline-train")
    nodes = int(env["NNODES"])
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == nodes
    assert spec["activeDeadlineSeconds"] > 0 and 0 <= spec["backoffLimit"] <= 3
    assert pod["restartPolicy"] == "Never"  # podFailurePolicy requires it
    actions = {r["action"]: r for r in spec["podFailurePolicy"]["rules"]}
    assert actions["Ignore"]["onPodConditions"][0]["type"] == "DisruptionTarget"
    assert actions["FailJob"]["onExitCodes"]["containerName"] == pod["containers"][0]["name"]
    # Rank 0's name resolves through the headless Service: <job>-0.<subdomain>.
    service = one(docs, "Service", pod["subdomain"])
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["ports"][0]["port"] == int(env["MASTER_PORT"])
    master = next(e for e in pod["containers"][0]["env"] if e["name"] == "MASTER_ADDR")
    assert master["value"] == f"{job['metadata']['name']}-0.{pod['subdomain']}"
    command = " ".join(pod["containers"][0]["args"])
    assert "-m components.stages.ranks" in command and "--node-rank" in command


def test_the_flat_manifests_are_gone_and_nothing_names_them():
    assert sorted(p.name for p in K8S.iterdir()) == ["base", "overlays"]
    names = re.compile(r"deploy/k8s/serving\.yaml|training-job\.yaml|"
                       r"\"k8s\"\s*/\s*\"serving\.yaml\"")
    hits = [str(p.relative_to(PROJECT_ROOT)) for p in PROJECT_ROOT.rglob("*")
            if p.suffix in {".md", ".py", ".yaml", ".yml", ".toml"} and p.is_file()
            and not {".venv", ".git", "site", "node_modules"} & set(p.parts)
            and names.search(p.read_text(errors="ignore"))]
    assert hits == []


def test_dockerignore_keeps_data_out_and_the_copied_sources_in():
    patterns = [line.strip() for line in (PROJECT_ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    for kept_out in (".venv", "mlruns", "mlartifacts", "artifacts", "data", ".git",
                     ".dvc/cache", "site", ".pytest_cache"):
        assert kept_out in patterns, kept_out
    for dockerfile in DOCKERFILES.values():
        text = (PROJECT_ROOT / dockerfile).read_text().replace("\\\n", " ")
        for line in re.findall(r"^COPY (.+)$", text, re.M):
            for source in line.split()[:-1]:
                assert (PROJECT_ROOT / source).exists(), f"{dockerfile}: {source} missing"
                top = source.split("/")[0]
                assert top not in patterns and source not in patterns, \
                    f"{dockerfile} copies {source}, which .dockerignore leaves out"
