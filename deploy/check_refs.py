"""What a schema cannot see in the deployment files: that they agree with each other
and with the binary.

Run by deploy/check.sh after the schema checks. Each check fails with the file and
what is wrong: a CITYPARK_* variable or a serve flag the binary does not have (both
would be ignored or refused only at start), a service, secret, port or label that
names nothing, probes that are not gRPC health checks, a termination grace shorter
than the drain, a Redis deployment without its PostgreSQL history and plates' hash
key (the binary refuses to start), a history URL that does not match its database.
"""

import re
import sys
from pathlib import Path
from urllib.parse import urlsplit

import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
problems = []


def fail(where, what):
    problems.append(f"{where}: {what}")


def binary_settings():
    """The CITYPARK_* variables the binary reads, and `serve`'s long flags."""
    variables = set()
    for source in (ROOT / "src").rglob("*.rs"):
        variables |= set(re.findall(r'env = "(CITYPARK_[A-Z0-9_]+)"', source.read_text()))
    config = (ROOT / "src/config.rs").read_text()

    def flags_of(struct):
        """A struct's fields as flags, those of a #[command(flatten)] field's struct
        instead of the field's own name."""
        body = config.split(f"pub struct {struct} {{", 1)[1].split("\n}\n", 1)[0]
        flags = set()
        fields = re.findall(r"((?:^\s*#\[.*\n)*)^\s*pub (\w+): ([\w:]+)", body, re.M)
        for attributes, name, kind in fields:
            if "#[command(flatten)]" in attributes:
                flags |= flags_of(kind.rsplit("::", 1)[-1])
            else:
                flags.add("--" + name.replace("_", "-"))
        return flags

    return variables, flags_of("ServeConfig")


VARIABLES, SERVE_FLAGS = binary_settings()


def check_serve_command(where, command):
    """`serve` and flags it has, as an image's CMD or a pod's args."""
    if not command or command[0] != "serve":
        fail(where, f"runs {command!r}, not `serve`")
        return
    for word in command[1:]:
        flag = word.split("=", 1)[0]
        if flag.startswith("--") and flag not in SERVE_FLAGS:
            fail(where, f"`serve` has no flag {flag}")


def check_variables(where, names):
    for name in names:
        if name.startswith("CITYPARK_") and name not in VARIABLES:
            fail(where, f"the binary reads no variable {name}")


def interpolated(value):
    """A Compose value with ${VAR:-default} replaced by its default."""
    return re.sub(r"\$\{[A-Za-z0-9_]+:-([^}]*)\}", r"\1", value)


def check_merges(where, text):
    """YAML readers disagree on which of several anchors merged into one mapping
    (`<<: [*a, *b]`) wins a key they share (PyYAML 6.0.4 takes the last, the YAML
    merge specification and Docker Compose the first): merged anchors must not
    share a key."""

    def keys(node):
        return {key.value for key, _ in node.value if key.tag != "tag:yaml.org,2002:merge"}

    def walk(node):
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if key.tag == "tag:yaml.org,2002:merge" and isinstance(value, yaml.SequenceNode):
                    seen = set()
                    for merged in value.value:
                        shared = seen & keys(merged)
                        if shared:
                            line = key.start_mark.line + 1
                            fail(where, f"line {line}: merged anchors share {sorted(shared)}")
                        seen |= keys(merged)
                walk(value)
        elif isinstance(node, yaml.SequenceNode):
            for item in node.value:
                walk(item)

    walk(yaml.compose(text, Loader=yaml.SafeLoader))


def check_history_url(where, url, database):
    """A postgres:// history URL against the database it names: host, port, user,
    password and database, as `database` (a dict of those it knows) has them."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgres", "postgresql"):
        fail(where, f"CITYPARK_HISTORY {parts.scheme}://… is not a PostgreSQL URL")
        return
    found = {
        "port": parts.port or 5432,
        "user": parts.username,
        "password": parts.password,
        "database": parts.path.lstrip("/") or parts.username,
    }
    for what, expected in database.items():
        if expected is None or found[what] == expected:
            continue
        if what == "password":
            fail(where, "CITYPARK_HISTORY's password is not its database's")
        else:
            fail(where, f"CITYPARK_HISTORY's {what} is {found[what]!r}, its database's {expected!r}")


def check_compose():
    where = "deploy/compose.yaml"
    text = (DEPLOY / "compose.yaml").read_text()
    check_merges(where, text)
    compose = yaml.safe_load(text)
    services = compose["services"]
    secrets = compose.get("secrets", {})
    volumes = compose.get("volumes", {})
    for name, secret in secrets.items():
        path = DEPLOY / interpolated(secret["file"])
        if not path.is_file():
            fail(where, f"secret {name}: no file {path.relative_to(ROOT)}")

    host_ports = {}
    citypark = {n: s for n, s in services.items() if s.get("image") == "citypark:local"}
    builders = [n for n, s in citypark.items() if "build" in s]
    if len(builders) != 1:
        fail(where, f"one citypark service should build the image, not {builders}")
    for name, service in services.items():
        at = f"{where}: {name}"
        for needed in service.get("depends_on", {}):
            if needed not in services:
                fail(at, f"depends on {needed}, which is no service")
        for secret in service.get("secrets", []):
            if secret not in secrets:
                fail(at, f"uses secret {secret}, which is not declared")
        for mount in service.get("volumes", []):
            source = mount.split(":", 1)[0]
            if source.startswith("."):
                if not (DEPLOY / source).exists():
                    fail(at, f"mounts {source}, which does not exist")
            elif source not in volumes:
                fail(at, f"mounts volume {source}, which is not declared")
        for port in service.get("ports", []):
            host = port.rsplit(":", 1)[0]
            if host in host_ports:
                fail(at, f"publishes {host} as {host_ports[host]} does")
            host_ports[host] = name

    demos = []
    for name, service in citypark.items():
        at = f"{where}: {name}"
        command = service.get("command", ["serve"])
        check_serve_command(at, command)
        environment = service.get("environment", {})
        check_variables(at, environment)
        for variable in (
            "CITYPARK_API_KEYS_FILE",
            "CITYPARK_DRIVER_JWT_SECRET_FILE",
            "CITYPARK_HISTORY_PLATE_KEY_FILE",
        ):
            path = environment.get(variable)
            if path and path.removeprefix("/run/secrets/") not in service.get("secrets", []):
                fail(at, f"{variable}={path} is not one of its secrets")
        store = environment.get("CITYPARK_STORE", "")
        host = re.match(r"redis://([^:/]+)", store)
        if not host or services.get(host.group(1), {}).get("image", "").split(":")[0] != "redis":
            fail(at, f"CITYPARK_STORE={store!r} names no Redis service")
        # A Redis store's instances share one PostgreSQL history and one plates' hash
        # key: without them the binary refuses to start.
        history = environment.get("CITYPARK_HISTORY", "")
        database = services.get(urlsplit(history).hostname or "", {})
        if database.get("image", "").split(":")[0] != "postgres":
            fail(at, f"CITYPARK_HISTORY={history!r} names no PostgreSQL service")
        else:
            settings = database.get("environment", {})
            user = settings.get("POSTGRES_USER", "postgres")
            check_history_url(at, history, {
                "port": 5432,
                "user": user,
                "password": settings.get("POSTGRES_PASSWORD"),
                "database": settings.get("POSTGRES_DB", user),
            })
        if "CITYPARK_HISTORY_PLATE_KEY_FILE" not in environment:
            fail(at, "no CITYPARK_HISTORY_PLATE_KEY_FILE: required with a PostgreSQL history")
        # It starts once what it needs answers (it gives up on history at once).
        depends_on = service.get("depends_on", {})
        for needed in (host.group(1) if host else None, urlsplit(history).hostname):
            if needed and depends_on.get(needed, {}).get("condition") != "service_healthy":
                fail(at, f"does not wait for {needed} to be healthy (depends_on)")
        test = service.get("healthcheck", {}).get("test", [])
        if test[1:3] != ["citypark", "health"]:
            fail(at, f"health check {test!r} is not `citypark health`")
        if "--demo" in command:
            demos.append(name)
    if len(demos) != 1 or len(citypark) - len(demos) < 2:
        fail(where, f"want two instances and one demo, have {sorted(citypark)} (demo: {demos})")

    redis = " ".join(services.get("redis", {}).get("command", []))
    if "--appendonly yes" not in redis:
        fail(where, "redis runs without --appendonly yes")
    for name, service in services.items():
        if service.get("image", "").split(":")[0] != "postgres":
            continue
        if not any(m.split(":")[0] in volumes and m.split(":")[1] == "/var/lib/postgresql/data"
                   for m in service.get("volumes", [])):
            fail(where, f"{name}: its data is in no named volume (/var/lib/postgresql/data)")
        if "pg_isready" not in service.get("healthcheck", {}).get("test", []):
            fail(where, f"{name}: its health check is not pg_isready")

    prometheus = yaml.safe_load((DEPLOY / "prometheus-compose.yml").read_text())
    targets = {
        target
        for job in prometheus["scrape_configs"]
        for static in job.get("static_configs", [])
        for target in static["targets"]
    }
    expected = {f"{name}:9464" for name in citypark}
    if targets != expected:
        fail("deploy/prometheus-compose.yml", f"scrapes {sorted(targets)}, not {sorted(expected)}")
    mounted = {
        mount.split(":")[1]
        for mount in services.get("prometheus", {}).get("volumes", [])
        if mount.startswith(".")
    }
    for rules in prometheus.get("rule_files", []):
        if f"/etc/prometheus/{rules}" not in mounted:
            fail(where, f"prometheus: rule file {rules} is not mounted beside its configuration")

    grafana = services.get("grafana", {})
    provisioning = grafana.get("environment", {}).get("GF_PATHS_PROVISIONING", "")
    grafana_mounts = {
        mount.split(":")[1]: mount.split(":")[0]
        for mount in grafana.get("volumes", [])
        if mount.startswith(".")
    }

    def on_host(path):
        """The file of this machine that a path in the Grafana container is."""
        for target, source in grafana_mounts.items():
            if path == target or path.startswith(target + "/"):
                return DEPLOY / source / path[len(target) :].lstrip("/")
        return None

    local = on_host(provisioning)
    if local is None or not (local / "datasources").is_dir():
        fail(where, f"grafana: GF_PATHS_PROVISIONING={provisioning!r} is not the mounted provisioning")
        return
    for source in (local / "datasources").glob("*.yml"):
        for datasource in yaml.safe_load(source.read_text())["datasources"]:
            host = re.match(r"https?://([^:/]+)", datasource["url"])
            if not host or host.group(1) not in services:
                fail(str(source.relative_to(ROOT)), f"url {datasource['url']} names no service")
    for source in (local / "dashboards").glob("*.yml"):
        for provider in yaml.safe_load(source.read_text())["providers"]:
            path = provider["options"]["path"]
            if on_host(path) is None:
                fail(str(source.relative_to(ROOT)), f"dashboards path {path} is not mounted")


def k8s_objects():
    """The objects kustomization.yaml lists, by (kind, name)."""
    k8s = DEPLOY / "k8s"
    kustomization = yaml.safe_load((k8s / "kustomization.yaml").read_text())
    objects = {}
    for resource in kustomization["resources"]:
        for document in yaml.safe_load_all((k8s / resource).read_text()):
            if document:
                objects[(document["kind"], document["metadata"]["name"])] = (resource, document)
    return objects


def selects(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())


def check_k8s():
    objects = k8s_objects()

    def one(kind):
        found = [(f"deploy/k8s/{r}", d) for (k, _), (r, d) in objects.items() if k == kind]
        if not found:
            fail("deploy/k8s", f"no {kind}")
        return found

    config = {}
    for _, configmap in one("ConfigMap"):
        config.update(configmap.get("data", {}))
    secrets = {
        name: {**d.get("data", {}), **d.get("stringData", {})}
        for (kind, name), (_, d) in objects.items()
        if kind == "Secret"
    }
    secret_keys = {name: set(data) for name, data in secrets.items()}
    configmaps = {
        name: d.get("data", {}) for (kind, name), (_, d) in objects.items() if kind == "ConfigMap"
    }

    def environment(at, container):
        """A container's variables as the pod gets them: the ConfigMaps of envFrom, then
        env (a Secret's value as written in stringData; None when it is not)."""
        variables = {}
        for source in container.get("envFrom", []):
            name = source.get("configMapRef", {}).get("name")
            if name:
                variables.update(configmaps.get(name, {}))
        for variable in container.get("env", []):
            ref = variable.get("valueFrom", {})
            if "secretKeyRef" in ref or "configMapKeyRef" in ref:
                kind = "Secret" if "secretKeyRef" in ref else "ConfigMap"
                ref = ref.get("secretKeyRef") or ref.get("configMapKeyRef")
                data = (secrets if kind == "Secret" else configmaps).get(ref["name"])
                if data is None or ref["key"] not in data:
                    if not ref.get("optional"):
                        fail(at, f"{variable['name']} names {kind} {ref['name']} key {ref['key']}, "
                                 "which is not in the kustomization")
                    continue
                variables[variable["name"]] = data[ref["key"]]
            else:
                variables[variable["name"]] = variable.get("value")
        return variables

    def hardened(at, pod, container):
        """What every pod here does: runs as non-root, on a read-only root filesystem
        without privilege escalation, within cpu and memory requests and limits."""
        if not pod.get("securityContext", {}).get("runAsNonRoot"):
            fail(at, "pods may run as root")
        context = container.get("securityContext", {})
        if not context.get("readOnlyRootFilesystem") or context.get("allowPrivilegeEscalation", True):
            fail(at, "the root filesystem is writable or privileges may escalate")
        resources = container.get("resources", {})
        for kind in ("requests", "limits"):
            if not {"cpu", "memory"} <= set(resources.get(kind, {})):
                fail(at, f"no cpu and memory {kind}")

    pods = {}
    histories, databases, databases_by_host = [], {}, {}
    for where, deployment in one("Deployment"):
        spec = deployment["spec"]
        template = spec["template"]
        labels = template["metadata"]["labels"]
        if not selects(spec["selector"]["matchLabels"], labels):
            fail(where, "the selector does not select the pod template")
        if spec.get("replicas", 1) < 2:
            fail(where, "fewer than 2 replicas")
        pod = template["spec"]
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for container in pod["containers"]:
            at = f"{where}: {container['name']}"
            check_serve_command(at, container.get("args", []))
            for source in container.get("envFrom", []):
                name = source.get("configMapRef", {}).get("name")
                if name and ("ConfigMap", name) not in objects:
                    fail(at, f"envFrom names ConfigMap {name}, which is not in the kustomization")
            check_variables(at, config)
            check_variables(at, [e["name"] for e in container.get("env", [])])
            variables = environment(at, container)
            if "CITYPARK_STORE" not in variables:
                fail(at, "no CITYPARK_STORE: the pods would not share a city")
            hardened(at, pod, container)

            # A Redis store's pods share one PostgreSQL history and one plates' hash
            # key: without them the binary refuses to start.
            flags = {word.partition("=")[0] for word in container.get("args", [])}
            if "CITYPARK_HISTORY" not in variables and "--history" not in flags:
                fail(at, "no CITYPARK_HISTORY: required with a Redis store")
            if not ("CITYPARK_HISTORY_PLATE_KEY_FILE" in variables or "--history-plate-key-file" in flags):
                fail(at, "no CITYPARK_HISTORY_PLATE_KEY_FILE: required with a PostgreSQL history")
            history = variables.get("CITYPARK_HISTORY")
            if history:
                histories.append((at, history))

            ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
            pods[deployment["metadata"]["name"]] = (labels, spec.get("replicas", 1), ports)
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                grpc = container.get(probe, {}).get("grpc")
                if grpc is None or grpc.get("port") != ports.get("grpc"):
                    fail(at, f"{probe} is not a gRPC health check on the grpc port")

            grace = int(config.get("CITYPARK_SHUTDOWN_GRACE_SECS", 10))
            pause = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
            termination = pod.get("terminationGracePeriodSeconds", 30)
            if termination <= grace + pause:
                fail(at, f"terminationGracePeriodSeconds {termination} is not above the "
                         f"preStop pause {pause} s plus the shutdown grace {grace} s")

            # Files named by flags or variables are in a mounted Secret, under a key it
            # has.
            mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
            files = [word.partition("=")[::2] for word in container.get("args", [])]
            files += [(name, value) for name, value in variables.items() if name.endswith("_FILE")]
            for flag, path in files:
                if not flag.lower().replace("_", "-").endswith("-file") or not path:
                    continue
                directory, _, key = path.rpartition("/")
                volume = volumes.get(mounts.get(directory, ""), {})
                secret = volume.get("secret", {}).get("secretName")
                if secret is None:
                    fail(at, f"{flag}={path} is not in a mounted Secret")
                elif key not in secret_keys.get(secret, set()):
                    fail(at, f"{flag}={path}: Secret {secret} has no key {key}")

    # Databases: a StatefulSet's pods, with a Service that names them and a volume of
    # their own.
    statefulsets = [(f"deploy/k8s/{r}", d) for (k, _), (r, d) in objects.items() if k == "StatefulSet"]
    for where, statefulset in statefulsets:
        spec = statefulset["spec"]
        name = statefulset["metadata"]["name"]
        labels = spec["template"]["metadata"]["labels"]
        if not selects(spec["selector"]["matchLabels"], labels):
            fail(where, "the selector does not select the pod template")
        if ("Service", spec.get("serviceName")) not in objects:
            fail(where, f"serviceName {spec.get('serviceName')} is no Service in the kustomization")
        pod = spec["template"]["spec"]
        claims = {c["metadata"]["name"] for c in spec.get("volumeClaimTemplates", [])}
        for container in pod["containers"]:
            at = f"{where}: {container['name']}"
            hardened(at, pod, container)
            mounted = {m["name"] for m in container.get("volumeMounts", [])}
            if not claims & mounted:
                fail(at, "keeps its data on no volume claim")
            ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
            pods[name] = (labels, spec.get("replicas", 1), ports)
            variables = environment(at, container)
            if container["image"].split(":")[0] == "postgres":
                user = variables.get("POSTGRES_USER", "postgres")
                databases[name] = {
                    "user": user,
                    "password": variables.get("POSTGRES_PASSWORD"),
                    "database": variables.get("POSTGRES_DB", user),
                }

    service_ports = {}
    for where, service in one("Service"):
        name = service["metadata"]["name"]
        selected = [
            ports
            for labels, _, ports in pods.values()
            if selects(service["spec"]["selector"], labels)
        ]
        if not selected:
            fail(where, f"Service {name} selects no pod")
        for port in service["spec"]["ports"]:
            if selected and port["targetPort"] not in selected[0]:
                fail(where, f"Service {name}: targetPort {port['targetPort']} is no container port")
        service_ports[name] = (service["metadata"].get("labels", {}), {p["name"] for p in service["spec"]["ports"]})
        # The database behind this Service, if it is one, and the Service's ports.
        for pod_name, (labels, _, _) in pods.items():
            if pod_name in databases and selects(service["spec"]["selector"], labels):
                ports = {p["port"] for p in service["spec"]["ports"]}
                databases_by_host[name] = (databases[pod_name], ports)

    # A history URL that names a Service here names its database, as it has them.
    for at, history in histories:
        host = (urlsplit(history).hostname or "").split(".")[0]
        if host not in databases_by_host:
            continue  # an external database
        database, ports = databases_by_host[host]
        if (urlsplit(history).port or 5432) not in ports:
            fail(at, f"CITYPARK_HISTORY's port is no port of Service {host}")
        check_history_url(at, history, database)

    for where, budget in one("PodDisruptionBudget"):
        if not any(selects(budget["spec"]["selector"]["matchLabels"], p[0]) for p in pods.values()):
            fail(where, "the PodDisruptionBudget selects no pod")
    for where, autoscaler in one("HorizontalPodAutoscaler"):
        target = autoscaler["spec"]["scaleTargetRef"]
        if target["name"] not in pods:
            fail(where, f"scales {target['kind']} {target['name']}, which is not in the kustomization")
        elif autoscaler["spec"]["minReplicas"] > pods[target["name"]][1]:
            fail(where, "minReplicas above the Deployment's replicas")
    for where, monitor in one("ServiceMonitor"):
        selector = monitor["spec"]["selector"]["matchLabels"]
        chosen = [ports for labels, ports in service_ports.values() if selects(selector, labels)]
        if len(chosen) != 1:
            fail(where, f"selects {len(chosen)} Services, not the metrics one")
        for endpoint in monitor["spec"]["endpoints"]:
            if chosen and endpoint["port"] not in chosen[0]:
                fail(where, f"endpoint port {endpoint['port']} is not a port of the Service")


def check_dockerfile():
    """The image listens where it says it does, runs unprivileged and checks its
    health with `citypark health`."""
    where = "Dockerfile"
    lines = (ROOT / "Dockerfile").read_text().replace("\\\n", " ").splitlines()
    instructions = [line.split(None, 1) for line in lines if line.strip() and not line.startswith("#")]
    final = instructions[max(i for i, (op, _) in enumerate(instructions) if op == "FROM") :]
    env, exposed, user, healthcheck, cmd = {}, set(), None, "", None
    for op, rest in final:
        if op == "ENV":
            env.update(pair.split("=", 1) for pair in rest.split())
        elif op == "EXPOSE":
            exposed |= {int(port) for port in rest.split()}
        elif op == "USER":
            user = rest.strip()
        elif op == "HEALTHCHECK":
            healthcheck = rest
        elif op == "CMD":
            cmd = yaml.safe_load(rest)
    check_variables(where, env)
    listening = {int(v.rsplit(":", 1)[1]) for k, v in env.items() if k.endswith("_ADDR")}
    if listening != exposed:
        fail(where, f"listens on {sorted(listening)} but exposes {sorted(exposed)}")
    if not all(v.startswith("0.0.0.0:") for k, v in env.items() if k.endswith("_ADDR")):
        fail(where, "a port listens on loopback only, out of the container's reach")
    if user is None or not user.split(":")[0].isdigit() or user.startswith("0"):
        fail(where, f"USER {user!r} is not a numeric non-root user")
    grpc = env.get("CITYPARK_GRPC_ADDR", ":").rsplit(":", 1)[1]
    if '"citypark", "health"' not in healthcheck or f"127.0.0.1:{grpc}" not in healthcheck:
        fail(where, "HEALTHCHECK is not `citypark health` on the gRPC port")
    check_serve_command(where, cmd or [])
    if "--locked" not in (ROOT / "Dockerfile").read_text():
        fail(where, "the build is not --locked")


def check_api_keys(where, text):
    """An API keys file as `serve --api-keys-file` reads it."""
    try:
        import tomllib
    except ImportError:  # Python before 3.11: nothing to parse with.
        return
    operators = tomllib.loads(text).get("operator", [])
    if not operators:
        fail(where, "no [[operator]]")
    for operator in operators:
        if not re.fullmatch(r"[0-9a-f]{64}", operator.get("key_sha256", "")) or not operator.get("id"):
            fail(where, f"operator {operator!r} needs an id and a hex key_sha256")


if __name__ == "__main__":
    check_dockerfile()
    check_compose()
    check_k8s()
    check_api_keys("deploy/api-keys.example.toml", (DEPLOY / "api-keys.example.toml").read_text())
    for (kind, name), (resource, document) in k8s_objects().items():
        if kind == "Secret" and "api-keys.toml" in document.get("stringData", {}):
            check_api_keys(f"deploy/k8s/{resource}", document["stringData"]["api-keys.toml"])
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        sys.exit(1)
    print(f"Dockerfile, compose and k8s cross-references: ok ({len(VARIABLES)} CITYPARK_* variables, "
          f"{len(SERVE_FLAGS)} serve flags known)")
