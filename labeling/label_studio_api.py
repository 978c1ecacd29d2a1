"""Label Studio through its API: push a tasks dir into a project, pull the labelers' work back.

    chatsmith labels push TASKS_DIR --label-studio URL [--project NAME]
    chatsmith labels pull --label-studio URL --project ID --out DIR [--tasks TASKS_JSONL]

`push` reads a tasks dir as `labels tasks` (`labeling.tasks.write_tasks`, `write_writing_tasks`)
or the arena's human export writes it (tasks.jsonl, label_studio_import.json,
label_studio_config.xml), tells its kind from the labeling config (ranking comparisons,
demonstrations, rewrites, the arena's pairwise battles), creates the project with that config or
reuses the one with the same title, and imports the tasks not already there (matched by the
`task_id` kept in each task's data: pushing again imports nothing twice). It records the project
in TASKS_DIR/label_studio_project.json.

`pull` exports the project as JSON through the API, writes the export as it came
(DIR/label_studio_export.json) and ingests it with `labeling.ingest.ingest`, exactly as a file
export (quarantine, counts, `--tasks` matching). The export is the whole project each time and the
ingest replaces DIR's accepted/rejected files, so pulling again adds nothing twice.

Auth: a personal access token (a JWT refresh token; label-studio-sdk refreshes it) in
LABEL_STUDIO_API_KEY. Every failure is a `LabelStudioError`: one line naming the URL or project
(the CLI prints it and exits 2).

The client is label-studio-sdk 2.x, an extra (`pip install 'chatsmith[label-studio]'`), imported
only when a server is called. No torch here.
"""

from __future__ import annotations

import json
import os
import re
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from labeling.readers import InputError

ENV_KEY = "LABEL_STUDIO_API_KEY"
INSTALL = "pip install 'chatsmith[label-studio]'"
TOKEN_HELP = ("create a personal access token in Label Studio (Account & Settings > Personal Access Token) "
              f"and export it as {ENV_KEY}")
KINDS = ("comparison", "demonstration", "rewrite", "arena")
KIND_TITLES = {"comparison": "ranking", "demonstration": "demonstrations", "rewrite": "rewrites", "arena": "arena"}
TASK_FILES = ("tasks.jsonl", "label_studio_import.json", "label_studio_config.xml")
PROJECT_RECORD = "label_studio_project.json"  # written into the tasks dir by push
EXPORT_NAME = "label_studio_export.json"  # the raw export pull writes next to the ingest files
TITLE_MAX = 50  # Label Studio's PROJECT_TITLE_MAX_LEN
TIMEOUT_S = 120.0


class LabelStudioError(InputError):
    """A Label Studio server, token, project or tasks dir that cannot be used: one line."""


# --------------------------------------------------------------------------------------------- configs


def config_kind(label_config: str | None) -> str | None:
    """Which chatsmith labeling config `label_config` is: comparison (List + Ranker `rank`), arena
    (List + Choices `preference`), demonstration (TextArea `reply` under the prompt), rewrite
    (Text `original` + TextArea `rewrite`); None for any other config."""
    if not label_config or not label_config.strip():
        return None
    try:
        root = ElementTree.fromstring(label_config)
    except ElementTree.ParseError:
        return None
    tags: dict[tuple[str, str], dict] = {}
    for element in root.iter():
        name = element.attrib.get("name")
        if name:
            tags[(element.tag.lower(), name)] = element.attrib
    if ("paragraphs", "prompt") not in tags:
        return None
    if ("list", "replies") in tags and ("ranker", "rank") in tags:
        return "comparison"
    if ("list", "replies") in tags and ("choices", "preference") in tags:
        return "arena"
    if ("text", "original") in tags and ("textarea", "rewrite") in tags:
        return "rewrite"
    if ("textarea", "reply") in tags:
        return "demonstration"
    return None


@dataclass
class TasksDir:
    """A tasks dir read for pushing."""

    path: Path
    kind: str
    config: str
    rows: list[dict]  # label_studio_import.json: [{"data": {...}}, ...]
    task_ids: list[str] = field(default_factory=list)


def read_tasks_dir(tasks_dir) -> TasksDir:
    """Read and check a tasks dir: its three files, the kind its config is for, and that the tasks
    (tasks.jsonl) and the import rows (label_studio_import.json) are the same tasks of that kind."""
    path = Path(tasks_dir)
    if not path.is_dir():
        raise LabelStudioError(f"{path}: no such tasks directory (make one with `chatsmith labels tasks ... --out {path}`)")
    missing = [name for name in TASK_FILES if not (path / name).is_file()]
    if missing:
        raise LabelStudioError(f"{path} is not a tasks directory: no {', '.join(missing)} "
                               "(written by `chatsmith labels tasks` or the arena's --judge human)")
    config = (path / "label_studio_config.xml").read_text(encoding="utf-8")
    kind = config_kind(config)
    if kind is None:
        raise LabelStudioError(f"{path / 'label_studio_config.xml'} is not a chatsmith labeling config "
                               "(no ranker, arena choice or reply box over the prompt)")
    try:
        rows = json.loads((path / "label_studio_import.json").read_text(encoding="utf-8"))
    except ValueError as err:
        raise LabelStudioError(f"{path / 'label_studio_import.json'}: not JSON ({err})") from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) and isinstance(r.get("data"), dict) for r in rows):
        raise LabelStudioError(f"{path / 'label_studio_import.json'}: expected a list of {{\"data\": {{...}}}} tasks")
    tasks = []
    with open(path / "tasks.jsonl", encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                try:
                    tasks.append(json.loads(line))
                except ValueError as err:
                    raise LabelStudioError(f"{path / 'tasks.jsonl'}:{number}: not JSON ({err})") from None
    want = {"comparison": ("task", None), "arena": ("task", None), "demonstration": ("writing_task", "demonstration"),
            "rewrite": ("writing_task", "rewrite")}[kind]
    for number, task in enumerate(tasks, start=1):
        if (task.get("kind"), task.get("mode")) != want:
            got = task.get("mode") or task.get("kind")
            raise LabelStudioError(f"{path / 'tasks.jsonl'}:{number}: a {got} task in a tasks dir whose config is for {kind} tasks")
    ids = [str(r["data"].get("task_id") or "") for r in rows]
    if not all(ids) or len(set(ids)) != len(ids):
        raise LabelStudioError(f"{path / 'label_studio_import.json'}: every task needs its own data.task_id")
    if set(ids) != {str(t.get("task_id")) for t in tasks}:
        raise LabelStudioError(f"{path}: tasks.jsonl and label_studio_import.json hold different tasks (written by two runs?)")
    return TasksDir(path=path, kind=kind, config=config, rows=rows, task_ids=ids)


def default_title(tasks_dir, kind: str) -> str:
    """`chatsmith <kind>: <name>`, at most 50 characters. <name> is the tasks dir's name, or the run
    dir's for the arena (RUN/arena/human/tasks) and for a dir named `tasks`."""
    path = Path(tasks_dir).resolve()
    parts = path.parts
    if len(parts) >= 4 and parts[-3:] == ("arena", "human", "tasks"):
        name = parts[-4]
    elif path.name == "tasks" and len(parts) >= 2:
        name = f"{parts[-2]}/tasks"
    else:
        name = path.name
    title = f"chatsmith {KIND_TITLES[kind]}: {name}"
    return title if len(title) <= TITLE_MAX else title[: TITLE_MAX - 1] + "…"


# --------------------------------------------------------------------------------------------- the client


def _sdk():
    try:
        import label_studio_sdk
        from label_studio_sdk.core.api_error import ApiError
        from label_studio_sdk.core.parse_error import ParsingError
    except ImportError:
        raise LabelStudioError(f"the Label Studio client (label-studio-sdk) is not installed: {INSTALL}") from None
    return label_studio_sdk, (ApiError, ParsingError)


def _base_url(url: str) -> str:
    url = (url or "").strip()
    if not re.match(r"^https?://[^/\s]+", url):
        raise LabelStudioError(f"--label-studio {url!r} is not a server URL (expected http://HOST:PORT)")
    return url.rstrip("/")


def _detail(body: Any) -> str:
    if isinstance(body, dict):
        for key in ("detail", "message", "error", "validation_errors"):
            if body.get(key):
                value = body[key]
                return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        return json.dumps(body, ensure_ascii=False)[:300]
    text = " ".join(str(body or "").split())
    return text[:300]


class Client:
    """A label-studio-sdk client for one server, whose every failure is a one-line LabelStudioError."""

    def __init__(self, url: str, api_key: str | None = None):
        self.url = _base_url(url)
        key = api_key if api_key is not None else os.environ.get(ENV_KEY, "")
        key = key.strip()
        if not key:
            raise LabelStudioError(f"no API key for Label Studio at {self.url}: {TOKEN_HELP}")
        sdk, (self._api_error, self._parsing_error) = _sdk()
        self._legacy = key.count(".") != 2  # until the SDK says: a personal access token is a JWT
        self.sdk = self.call("connecting", lambda: sdk.LabelStudio(base_url=self.url, api_key=key, timeout=TIMEOUT_S))
        tokens = getattr(getattr(self.sdk, "_client_wrapper", None), "_tokens_client", None)
        self._legacy = bool(getattr(tokens, "_use_legacy_token", self._legacy))  # not a JWT: sent as `Token KEY`

    def call(self, what: str, fn: Callable[[], Any], *, project: int | str | None = None) -> Any:
        """fn(), its failures turned into one line saying `what` was being done, at which URL / project."""
        import httpx

        where = f"Label Studio at {self.url}" + (f", project {project}" if project is not None else "")
        try:
            return fn()
        except self._api_error as err:
            status, detail = err.status_code, _detail(err.body)
            if isinstance(err.body, str) and err.body.lstrip().startswith("<"):
                raise LabelStudioError(f"{where} answered {status} with a web page, not Label Studio's API, while {what}: "
                                       f"is {self.url} the Label Studio server's address?") from None
            if status in (401, 403) and "legacy token" in detail.lower():
                raise LabelStudioError(
                    f"{where} refused the legacy API token in {ENV_KEY} ({detail}): {TOKEN_HELP}, "
                    "or have an admin enable legacy tokens for the organization") from None
            if status == 401 or (status == 403 and what in ("connecting", "checking the token")):
                kind = "legacy API token" if self._legacy else "personal access token"
                raise LabelStudioError(f"{where} refused the {kind} in {ENV_KEY} ({status}: {detail}): {TOKEN_HELP}") from None
            if status == 404 and project is not None:
                raise LabelStudioError(f"{where}: no such project ({status}: {detail}); list the projects at {self.url}/projects") from None
            raise LabelStudioError(f"{where} answered {status} while {what}: {detail}") from None
        except self._parsing_error as err:
            raise LabelStudioError(f"{where} answered {err.status_code} in a shape label-studio-sdk does not know while {what} "
                                   f"(a server newer or older than the SDK? {INSTALL} --upgrade)") from None
        except (httpx.ConnectError, httpx.ConnectTimeout) as err:
            raise LabelStudioError(f"cannot reach Label Studio at {self.url} ({err or type(err).__name__}): "
                                   "is the server running (label-studio start) and the URL right?") from None
        except httpx.TimeoutException:
            raise LabelStudioError(f"{where} did not answer within {TIMEOUT_S:.0f} s while {what}") from None
        except httpx.HTTPError as err:
            raise LabelStudioError(f"{where}: {type(err).__name__} while {what}: {err}") from None
        except ValueError as err:  # a non-JSON answer (not a Label Studio server, or a proxy's error page)
            raise LabelStudioError(f"{where} answered something that is not Label Studio's JSON while {what} "
                                   f"({' '.join(str(err).split())[:200]}): is {self.url} a Label Studio server?") from None

    def check(self) -> dict:
        """Who the token belongs to ({"id", "email", ...}); fails early on a bad URL or token."""
        user = self.call("checking the token", lambda: self.sdk.users.whoami())
        return _plain(user)

    def project(self, project_id: int | str) -> dict:
        try:
            pid = int(project_id)
        except (TypeError, ValueError):
            raise LabelStudioError(f"--project {project_id!r} is not a project id (a number; see {self.url}/projects)") from None
        return _plain(self.call("reading the project", lambda: self.sdk.projects.get(id=pid), project=pid))

    def projects_titled(self, title: str) -> list[dict]:
        found = self.call("listing projects", lambda: list(self.sdk.projects.list(title=title, page_size=100)))
        return sorted((p for p in map(_plain, found) if p.get("title") == title), key=lambda p: p["id"])

    def project_url(self, project_id: int) -> str:
        return f"{self.url}/projects/{project_id}/data"


def _plain(obj: Any) -> dict:
    if isinstance(obj, dict):
        return obj
    for method in ("model_dump", "dict"):
        if hasattr(obj, method):
            return getattr(obj, method)()
    return dict(obj)


def _require_kind(client: Client, project: dict, kind: str | None = None) -> str:
    """The chatsmith kind of `project`'s labeling config; an error when it is not chatsmith's (or not `kind`)."""
    found = config_kind(project.get("label_config"))
    where = f"project {project.get('id')} ({project.get('title')!r}) at {client.url}"
    if found is None:
        raise LabelStudioError(f"{where} does not have a chatsmith labeling config (a ranker, arena choice or reply box "
                               "over the prompt): push chatsmith tasks into their own project (--project NEW_NAME)")
    if kind is not None and found != kind:
        raise LabelStudioError(f"{where} holds {found} tasks, not {kind} tasks: push into another project (--project NEW_NAME)")
    return found


# --------------------------------------------------------------------------------------------- push / pull


def existing_task_ids(client: Client, project_id: int) -> set[str]:
    """The chatsmith task ids (data.task_id) already in the project."""
    def ids():
        out = set()
        for task in client.sdk.tasks.list(project=project_id, fields="task_only", page_size=1000):
            data = getattr(task, "data", None) if not isinstance(task, dict) else task.get("data")
            if isinstance(data, dict) and data.get("task_id"):
                out.add(str(data["task_id"]))
        return out

    return client.call("listing the project's tasks", ids, project=project_id)


def push(tasks_dir, url: str, project: str | None = None, *, api_key: str | None = None) -> dict:
    """Import the tasks of `tasks_dir` into the project titled `project` (default: `default_title`)
    at `url`, creating it with chatsmith's labeling config for the dir's kind when there is none.

    Tasks already in the project (same data.task_id) are not imported again. A project with that
    title whose config is not chatsmith's, or is for another kind, is an error; one for the same
    kind whose config differs (more replies per task) gets the new config. Writes
    TASKS_DIR/label_studio_project.json. Returns {"project_id", "project_url", "title", "kind",
    "created", "imported", "already", "tasks", "url"}."""
    tasks = read_tasks_dir(tasks_dir)
    client = Client(url, api_key)
    client.check()
    title = project or default_title(tasks.path, tasks.kind)
    if not 3 <= len(title) <= TITLE_MAX:
        raise LabelStudioError(f"--project {title!r}: a Label Studio project title has 3 to {TITLE_MAX} characters")
    found = client.projects_titled(title)
    if len(found) > 1:
        raise LabelStudioError(f"{len(found)} projects are titled {title!r} at {client.url} (ids "
                               f"{', '.join(str(p['id']) for p in found)}): give a unique --project title")
    created = not found
    if created:
        description = f"chatsmith {tasks.kind} tasks from {tasks.path.resolve()}"
        made = client.call(f"creating project {title!r}", lambda: client.sdk.projects.create(
            title=title, label_config=tasks.config, description=description, show_skip_button=True))
        info = _plain(made)
    else:
        info = client.project(found[0]["id"])
        _require_kind(client, info, tasks.kind)
        if (info.get("label_config") or "").strip() != tasks.config.strip():
            client.call("updating the labeling config", lambda: client.sdk.projects.update(
                id=info["id"], label_config=tasks.config), project=info["id"])
    pid = int(info["id"])
    already = existing_task_ids(client, pid) if not created else set()
    new = [{"data": row["data"]} for row in tasks.rows if str(row["data"]["task_id"]) not in already]
    for start in range(0, len(new), 1000):
        batch = new[start:start + 1000]
        client.call("importing tasks", lambda: client.sdk.projects.import_tasks(id=pid, request=batch), project=pid)
    result = {"url": client.url, "project_id": pid, "project_url": client.project_url(pid), "title": title,
              "kind": tasks.kind, "created": created, "imported": len(new), "already": len(tasks.rows) - len(new),
              "tasks": len(tasks.rows), "tasks_dir": str(tasks.path)}
    (tasks.path / PROJECT_RECORD).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


def export(url: str, project_id: int | str, path, *, api_key: str | None = None, client: Client | None = None) -> dict:
    """Download the JSON export of a chatsmith project (every task with at least one annotation,
    skipped ones included, with their drafts) to `path`, exactly as the server sent it.
    Returns {"path", "project_id", "kind", "tasks", "annotations", "url"}."""
    if client is None:
        client = Client(url, api_key)
        client.check()
    info = client.project(project_id)
    kind = _require_kind(client, info)
    pid = int(info["id"])

    def download() -> bytes:
        return b"".join(client.sdk.projects.exports.download_sync(id=pid, export_type="JSON", download_all_tasks=False))

    raw = client.call("exporting the annotations", download, project=pid)
    try:
        tasks = json.loads(raw)
    except ValueError as err:
        raise LabelStudioError(f"Label Studio at {client.url}, project {pid}: the JSON export is not JSON ({err})") from None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(raw)
    os.replace(tmp, path)
    annotations = sum(len(t.get("annotations") or []) for t in tasks if isinstance(t, dict)) if isinstance(tasks, list) else 0
    return {"url": client.url, "project_id": pid, "kind": kind, "path": str(path),
            "tasks": len(tasks) if isinstance(tasks, list) else 0, "annotations": annotations}


def pull(url: str, project_id: int | str, out_dir, *, tasks_path=None, api_key: str | None = None) -> dict:
    """Export project `project_id` to OUT_DIR/label_studio_export.json and ingest it into OUT_DIR
    (accepted.jsonl, rejected.jsonl, summary.json) with `labeling.ingest.ingest("label-studio", ...)`;
    `tasks_path` (a tasks.jsonl or the tasks dir) makes the tasks file authoritative, as for a file
    export. Returns the ingest summary with "project_id", "kind", "export" and "project_url" added.
    Raises NothingAccepted (after writing) when no annotation was usable, as ingest does."""
    from labeling.ingest import ingest

    out_dir = Path(out_dir)
    if tasks_path is not None:
        tasks_path = Path(tasks_path)
        if tasks_path.is_dir():
            tasks_path = tasks_path / "tasks.jsonl"
        if not tasks_path.is_file():
            raise LabelStudioError(f"--tasks {tasks_path}: no such tasks file")
    client = Client(url, api_key)
    client.check()
    got = export(url, project_id, out_dir / EXPORT_NAME, client=client)
    summary = ingest("label-studio", got["path"], out_dir, tasks_path=tasks_path)
    summary.update({"project_id": got["project_id"], "kind": got["kind"], "export": got["path"],
                    "project_url": client.project_url(got["project_id"]), "url": client.url})
    return summary


# --------------------------------------------------------------------------------------------- the arena


def arena_tasks_dir(out_dir) -> Path:
    """Where the arena's human export (`export_human_tasks`) puts its tasks: OUT/arena/human/tasks."""
    return Path(out_dir) / "arena" / "human" / "tasks"


def push_arena(out_dir, url: str, project: str | None = None, *, api_key: str | None = None) -> dict:
    """`chatsmith arena ... --judge human --label-studio URL`: push OUT/arena/human/tasks (after
    `export_human_tasks(answers, rows, OUT)`) into a project; the project is recorded in
    OUT/arena/human/tasks/label_studio_project.json for `pull_arena`. Returns `push`'s dict."""
    return push(arena_tasks_dir(out_dir), url, project, api_key=api_key)


def pull_arena(out_dir, url: str, project_id: int | str | None = None, *, api_key: str | None = None) -> Path:
    """`chatsmith arena --ingest --label-studio URL --out OUT`: download the verdicts of the project
    `push_arena` made (or `project_id`) to OUT/arena/human/label_studio_export.json and return that
    path, for `ingest_human(path, OUT)`."""
    record = arena_tasks_dir(out_dir) / PROJECT_RECORD
    if project_id is None:
        if not record.is_file():
            raise LabelStudioError(f"{record} not found: push the battles first (--judge human --label-studio URL), "
                                   "or give the project id")
        project_id = json.loads(record.read_text(encoding="utf-8"))["project_id"]
    got = export(url, project_id, Path(out_dir) / "arena" / "human" / EXPORT_NAME, api_key=api_key)
    if got["kind"] != "arena":
        raise LabelStudioError(f"project {got['project_id']} at {got['url']} holds {got['kind']} tasks, not the arena's battles")
    return Path(got["path"])


__all__ = ["LabelStudioError", "Client", "config_kind", "read_tasks_dir", "default_title", "push", "pull", "export",
           "push_arena", "pull_arena", "arena_tasks_dir", "ENV_KEY", "EXPORT_NAME", "PROJECT_RECORD"]
