"""The Flask app: Label Studio 1.23's ML backend protocol.

Endpoints (shapes in docs/service.md): ``GET /health`` (and ``/``), ``POST /setup``,
``POST /predict``, ``POST /webhook``, ``GET /metrics``, ``GET /versions``; ``/prelabel`` (a
project's pre-labelling job in the background, docs/prelabel.md).

``create_app`` builds everything from a :class:`ServiceConfig` and starts model loading in the
background; nothing happens at import time. Errors are turned into JSON in one place
(:func:`_register_error_handlers`): 400 for malformed payloads and unusable label configs, 401 for
bad basic auth, 413 past ``MAX_REQUEST_BYTES``, 503 while the models load or when the annotation
store cannot write, 500 otherwise — never a traceback in a body. Bodies are parsed within the
request limits of :mod:`backend.service.request_limits`.
"""

from __future__ import annotations

import atexit
import hashlib
import hmac
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable

import requests
from flask import Flask, Response, current_app, jsonify, request
from label_studio_sdk._legacy.exceptions import LabelStudioXMLSyntaxErrorSentryIgnored, LSConfigParseException
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from ..prelabel.service import PrelabelConflict, PrelabelJobs, PrelabelRequestError
from .adapters import ClassMaskAdapter, LabelConfigError
from .annotation_store import AnnotationStore
from .config import ServiceConfig
from .images import ImageFetcher, ImageLimits, ImageSource
from .jobs import BackgroundQueue
from .ls_auth import LabelStudioAuth
from .method_settings import check_operator_settings
from .metrics import ServiceMetrics
from .model_dir import model_dir_problem
from .feedback import AcceptanceTracker
from .reconcile import LabelStudioAnnotations, reconcile_project
from .request_limits import parse_json_body
from .runtime import MethodLibrary, ModelRuntime, ModelsNotReady, Runtime, project_number
from .segmentation_model import SegmentationMLBackend
from .ssrf import SsrfGuard, SsrfPolicy, origin_of, ssrf_safe_session
from .training import TrainingCoordinator, TrainingHook
from .webhooks import PayloadError, StorageUnavailable, WebhookProcessor

logger = logging.getLogger(__name__)

MODEL_CACHE_SIZE = 16
# What label-studio-sdk's LabelInterface raises for a label config that is not valid XML.
LABEL_CONFIG_PARSE_ERRORS = (LabelStudioXMLSyntaxErrorSentryIgnored, LSConfigParseException)
# Answered without basic auth: Label Studio's and compose's health checks send no credentials.
UNAUTHENTICATED_PATHS = frozenset({"/health"})


@dataclass(frozen=True)
class ProjectContext:
    """What ``/setup`` told us about a project."""

    label_config: str
    hostname: str | None
    access_token: str | None


class SegmentationService:
    """Glue between the HTTP layer and the model: per-project state, credentials, caches."""

    def __init__(
        self,
        config: ServiceConfig,
        runtime: Runtime,
        store: AnnotationStore,
        jobs: BackgroundQueue,
        training: TrainingCoordinator,
        metrics: ServiceMetrics,
        session: requests.Session | None = None,
    ) -> None:
        self.config = config
        self.runtime = runtime
        self.store = store
        self.jobs = jobs
        self.training = training
        self.metrics = metrics
        self.session = session or requests.Session()
        self.acceptance = AcceptanceTracker(config.model_dir / "acceptance", self.label_studio_annotations, metrics)
        self.webhooks = WebhookProcessor(store, jobs, metrics, training, self.model_for, self.acceptance)
        self._lock = threading.Lock()
        self._projects: dict[str, ProjectContext] = {}
        self._models: OrderedDict[tuple, SegmentationMLBackend] = OrderedDict()
        self._auths: dict[tuple[str, str], LabelStudioAuth] = {}
        self.limits = ImageLimits(
            max_bytes=config.image_max_bytes,
            timeout_s=config.image_timeout_s,
            max_pixels=config.image_max_pixels,
            model_max_pixels=config.model_max_pixels,
            decode_concurrency=config.image_decode_concurrency,
        )
        # Exempt from the SSRF checks: LABEL_STUDIO_URL (never a /setup hostname) and IMAGE_ALLOWED_HOSTS.
        self.ssrf_policy = SsrfPolicy(
            enabled=config.ssrf_protection_enabled,
            allowed_hosts=config.image_allowed_hosts,
            trusted_origin=config.label_studio_url,
        )
        # One guarded session for all image downloads (keep-alive across requests); see ssrf.py.
        self.image_session = (
            ssrf_safe_session(SsrfGuard(self.ssrf_policy)) if config.ssrf_protection_enabled else self.session
        )

    # ---- projects and models ------------------------------------------------------------

    @staticmethod
    def project_key(project: Any) -> str | None:
        """Label Studio's ``"<id>.<created timestamp>"`` -> ``"<id>"`` (None when absent)."""
        if project is None:
            return None
        return str(project).split(".")[0] or None

    def remember_project(self, project: str | None, context: ProjectContext) -> None:
        if project is not None:
            with self._lock:
                self._projects[project] = context

    def project_context(self, project: str | None) -> ProjectContext | None:
        with self._lock:
            return self._projects.get(project) if project is not None else None

    def model_for(self, label_config: str, project: str | None) -> SegmentationMLBackend:
        """The model for a label config (cached; parsing a config costs milliseconds)."""
        key = (project, hashlib.sha256(label_config.encode("utf-8")).hexdigest())
        with self._lock:
            model = self._models.get(key)
            if model is not None:
                self._models.move_to_end(key)
                return model
        model = SegmentationMLBackend(
            label_config,
            project,
            config=self.config,
            runtime=self.runtime,
            fetcher_for=lambda: self.fetcher_for(project),
            training=self.training,
        )
        with self._lock:
            self._models[key] = model
            while len(self._models) > MODEL_CACHE_SIZE:
                self._models.popitem(last=False)
        return model

    def image_source_for(self, project: str | None) -> ImageSource:
        """Where images come from: the environment's Label Studio credentials, else ``/setup``'s.

        The operator's key (``LABEL_STUDIO_API_KEY``, which requires ``LABEL_STUDIO_URL``) only ever
        goes to ``LABEL_STUDIO_URL``; a ``/setup`` token only to the ``/setup`` hostname's origin.
        """
        url, key = self.config.label_studio_url, self.config.label_studio_api_key
        context = self.project_context(project)
        if url is None and context is not None and context.hostname:
            url = context.hostname.rstrip("/")
        if key is None and context is not None and context.access_token and url is not None:
            if context.hostname is None or origin_of(context.hostname) == origin_of(url):
                key = context.access_token
        return ImageSource(
            self.limits,
            label_studio_url=url,
            api_key=key,
            local_files_root=self.config.local_files_root,
            ssrf=self.ssrf_policy,
            project_id=project_number(project),
        )

    def label_studio_annotations(self) -> LabelStudioAnnotations | None:
        """Label Studio's annotations through its API, with the operator's key only (``None``
        without ``LABEL_STUDIO_URL`` and ``LABEL_STUDIO_API_KEY``)."""
        url, key = self.config.label_studio_url, self.config.label_studio_api_key
        if url is None or not key:
            return None
        with self._lock:
            auth = self._auths.get((url, key))
            if auth is None:
                auth = self._auths[(url, key)] = LabelStudioAuth(url, key, session=self.session)
        return LabelStudioAnnotations(auth, self.session)

    def fetcher_for(self, project: str | None) -> ImageFetcher:
        """An image fetcher for a project (its access token cached across requests)."""
        source = self.image_source_for(project)
        auth = None
        if source.label_studio_url is not None and source.api_key:
            with self._lock:
                key = (source.label_studio_url, source.api_key)
                auth = self._auths.get(key)
                if auth is None:
                    auth = self._auths[key] = LabelStudioAuth(*key, session=self.session)
        return ImageFetcher(
            self.limits,
            label_studio_url=source.label_studio_url,
            auth=auth,
            local_files_root=source.local_files_root,
            session=self.image_session,
            ssrf=source.ssrf,
            project_id=source.project_id,
        )


def _json_body(optional: bool = False) -> dict:
    """The request body as a JSON object, parsed within the request limits (docs/reliability.md);
    ``optional``: an empty body is ``{}``."""
    config = current_app.extensions["segmentation_service"].config
    raw = request.get_data(cache=True)  # 413 (RequestEntityTooLarge) past MAX_REQUEST_BYTES
    if request.content_length is None and len(raw) >= config.max_request_bytes and request.input_stream.read(1):
        raise RequestEntityTooLarge()  # chunked: werkzeug stops reading at the limit without an error
    if optional and not raw.strip():
        return {}
    data = parse_json_body(raw, max_depth=config.max_json_depth, max_containers=config.max_json_containers)
    if not isinstance(data, dict):
        raise PayloadError("request body must be a JSON object")
    return data


def _parse_model(service: SegmentationService, label_config: Any, project: str | None) -> SegmentationMLBackend:
    if not isinstance(label_config, str) or not label_config.strip():
        raise PayloadError("the label config is missing or not a string")
    if not label_config.isascii():
        try:
            label_config.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate from a "\ud800" escape
            raise PayloadError("the label config is not valid Unicode text") from None
    try:
        return service.model_for(label_config, project)
    except LABEL_CONFIG_PARSE_ERRORS as error:
        raise PayloadError(f"the label config cannot be parsed: {error}") from None


def make_runtime(config: ServiceConfig, methods: MethodLibrary | None = None) -> Runtime:
    """The models' owner: in this process when ``methods`` is given (tests) or ``MODEL_PROCESS=false``,
    else in a child process (:mod:`backend.service.model_process`)."""
    if methods is not None or not config.model_process:
        return ModelRuntime(config, methods)
    from .model_process import ProcessModelRuntime

    return ProcessModelRuntime(config)


def create_app(
    config: ServiceConfig | None = None,
    *,
    methods: MethodLibrary | None = None,
    runtime: Runtime | None = None,
    training_hook: TrainingHook | None = None,
    session: requests.Session | None = None,
    load_models: bool | None = None,
) -> Flask:
    """The WSGI app.

    ``methods`` replaces the real method code, run in this process (tests); ``runtime`` replaces
    the models' owner altogether; ``load_models`` overrides ``MODEL_LOAD_ON_START``.
    """
    config = config or ServiceConfig.from_env()
    check_operator_settings(config)
    model_dir_error = model_dir_problem(config.model_dir)  # /health answers 503 with it (checked once)
    runtime = runtime or make_runtime(config, methods)
    atexit.register(runtime.stop)
    store = AnnotationStore(config.model_dir / "annotations")
    store.recover()
    metrics = ServiceMetrics()
    jobs = BackgroundQueue()
    training = TrainingCoordinator(store, runtime, hook=training_hook, hook_path=config.training_hook)
    service = SegmentationService(config, runtime, store, jobs, training, metrics, session=session)
    training.image_source_for = lambda project_id: service.image_source_for(
        None if project_id is None else str(project_id)
    )
    annotations = service.label_studio_annotations()
    if annotations is not None:
        training.reconcile = lambda project_id: reconcile_project(store, annotations, project_id)
        if config.reconcile_interval_s > 0:
            _start_reconcile_timer(config.reconcile_interval_s, store, jobs, training.reconcile)

    app = Flask("backend.service")
    app.config["MAX_CONTENT_LENGTH"] = config.max_request_bytes
    app.json.sort_keys = False
    app.extensions["segmentation_service"] = service
    app.extensions["prelabel_jobs"] = PrelabelJobs(config, runtime, service.fetcher_for)
    _register_basic_auth(app, config)
    _register_error_handlers(app, metrics)
    _register_routes(app, service, model_dir_error)
    if config.load_models_on_start if load_models is None else load_models:
        runtime.start_loading()
    logger.info(
        "service ready: preset=%s model_dir=%s label_studio=%s",
        config.model_preset,
        config.model_dir,
        config.label_studio_url or "(from /setup)",
    )
    return app


def _start_reconcile_timer(
    interval_s: float, store: AnnotationStore, jobs: BackgroundQueue, reconcile: Callable[[int], Any]
) -> None:
    """Every ``interval_s`` seconds, queue a reconciliation of each project the store knows."""

    def loop() -> None:
        while True:
            time.sleep(interval_s)
            for project_id in store.projects():
                jobs.submit(f"reconcile project {project_id}", reconcile, project_id)

    threading.Thread(target=loop, name="reconcile-timer", daemon=True).start()


def _register_basic_auth(app: Flask, config: ServiceConfig) -> None:
    if not config.basic_auth_enabled:
        return
    expected_user = config.basic_auth_user.encode("utf-8")
    expected_pass = config.basic_auth_pass.encode("utf-8")

    @app.before_request
    def require_basic_auth() -> Response | None:
        if request.path in UNAUTHENTICATED_PATHS:
            return None
        auth = request.authorization
        ok = (
            auth is not None
            and auth.type == "basic"
            and hmac.compare_digest((auth.username or "").encode("utf-8"), expected_user)
            and hmac.compare_digest((auth.password or "").encode("utf-8"), expected_pass)
        )
        if ok:
            return None
        response = jsonify({"error": "authentication required (HTTP basic auth, see BASIC_AUTH_USER)"})
        response.status_code = 401
        response.headers["WWW-Authenticate"] = 'Basic realm="ml-backend"'
        return response


def _register_error_handlers(app: Flask, metrics: ServiceMetrics) -> None:
    def error(status: int, message: str) -> tuple[Response, int]:
        metrics.increment("errors", str(status))
        return jsonify({"error": message}), status

    @app.errorhandler(PayloadError)
    def bad_payload(exc: PayloadError):
        return error(400, str(exc))

    @app.errorhandler(LabelConfigError)
    def bad_label_config(exc: LabelConfigError):
        return error(400, f"label config: {exc}")

    @app.errorhandler(ModelsNotReady)
    def not_ready(exc: ModelsNotReady):
        response, status = error(503, str(exc))
        if exc.retry_after_s is not None:
            response.headers["Retry-After"] = str(int(exc.retry_after_s))
        return response, status

    @app.errorhandler(StorageUnavailable)
    def storage_unavailable(exc: StorageUnavailable):
        return error(503, str(exc))

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(exc: RequestEntityTooLarge):
        limit = app.config["MAX_CONTENT_LENGTH"]
        return error(413, f"request body is larger than MAX_REQUEST_BYTES={limit} bytes")

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        return error(exc.code or 500, exc.description or exc.name)

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        logger.exception("unhandled error in %s %s", request.method, request.path)
        return error(500, f"internal error ({type(exc).__name__}); see the ML backend log")


def _register_routes(app: Flask, service: SegmentationService, model_dir_error: str | None = None) -> None:
    config, runtime, metrics = service.config, service.runtime, service.metrics
    prelabel_jobs: PrelabelJobs = app.extensions["prelabel_jobs"]

    @app.get("/")
    @app.get("/health")
    def health():
        if model_dir_error is not None:  # every correction and cache write would fail: say so
            return jsonify({"status": "ERROR", "error": model_dir_error, "models": runtime.status}), 503
        # 503 when the models failed to load or the model process is down and cannot restart now:
        # Label Studio then shows the backend as disconnected instead of sending predictions.
        report = runtime.health()
        body = {
            "status": "UP" if report.ok else "ERROR",
            "model_class": SegmentationMLBackend.__name__,
            "models": runtime.status,
            "preset": config.model_preset,
        }
        if report.ok:
            return jsonify(body)
        response = jsonify({**body, **({"model_process": report.details} if report.details else {})})
        response.status_code = 503
        if report.retry_after_s is not None:
            response.headers["Retry-After"] = str(int(report.retry_after_s))
        return response

    @app.post("/setup")
    def setup():
        data = _json_body()
        metrics.increment("setup", "requests")
        project = service.project_key(data.get("project"))
        model = _parse_model(service, data.get("schema"), project)
        model.check_config()
        hostname, token = data.get("hostname"), data.get("access_token")
        service.remember_project(
            project,
            ProjectContext(
                label_config=model.label_config,
                hostname=(
                    hostname if isinstance(hostname, str) and hostname.startswith(("http://", "https://")) else None
                ),
                access_token=token if isinstance(token, str) and token else None,
            ),
        )
        return jsonify({"model_version": model.model_version})

    @app.post("/predict")
    def predict():
        data = _json_body()
        tasks = data.get("tasks")
        if not isinstance(tasks, list) or not all(isinstance(task, dict) for task in tasks):
            raise PayloadError("'tasks' must be a list of task objects")
        if len(tasks) > config.max_tasks_per_request:
            raise PayloadError(
                f"{len(tasks)} tasks in one request, more than MAX_TASKS_PER_REQUEST={config.max_tasks_per_request}: "
                "ask for predictions on fewer tasks at a time"
            )
        project = service.project_key(data.get("project"))
        label_config = data.get("label_config")
        if label_config is None:
            context = service.project_context(project)
            label_config = context.label_config if context else None
            if label_config is None:
                raise PayloadError("'label_config' is missing and /setup was not called for this project")
        params = data.get("params") if isinstance(data.get("params"), dict) else {}
        model = _parse_model(service, label_config, project)
        started = time.monotonic()
        metrics.increment("predict", "requests")
        # interactive mode: Label Studio sends params.context; other clients put context at the top level
        context = params.get("context") if params.get("context") is not None else data.get("context")
        response = model.predict(tasks, context=context)
        metrics.increment("predict", "tasks", by=len(tasks))
        metrics.increment("predict", "tasks_failed", by=response.failed_tasks)
        metrics.increment("predict", "results", by=sum(len(p["result"]) for p in response.predictions if p))
        metrics.increment("predict", "seconds", by=time.monotonic() - started)
        for adapter in model.adapters:
            if isinstance(adapter, ClassMaskAdapter):
                for label, reason in adapter.unsupported.items():
                    metrics.record("unsupported_labels", adapter.from_name, label, value=reason)
        return jsonify(
            {"results": response.predictions, "model_version": response.model_version, "warnings": response.warnings}
        )

    @app.post("/webhook")
    def webhook():
        return jsonify(service.webhooks.handle(_json_body()))

    @app.get("/metrics")
    def metrics_endpoint():
        snapshot = metrics.snapshot()
        snapshot.update(
            model_class=SegmentationMLBackend.__name__,
            models=runtime.status,
            models_load_seconds=runtime.load_seconds,
            preset=config.model_preset,
            fmbseg_checkpoint=runtime.checkpoints.version(),
            training=service.training.status(),
            background_jobs=service.jobs.stats(),
            annotations_stored=service.store.count(),
            acceptance=service.acceptance.summary(),
            prelabel=prelabel_jobs.status(),
        )
        return jsonify(snapshot)

    @app.route("/prelabel", methods=["GET", "POST", "DELETE"])
    def prelabel():
        # POST {"project": ID, "methods"?, "limit"?, "tasks"?}: start the project's pre-labelling job
        # in the background (202); GET: every job's progress; DELETE ?project=ID: stop after the
        # batches in flight. docs/prelabel.md.
        try:
            if request.method == "GET":
                return jsonify({"jobs": prelabel_jobs.status()})
            if request.method == "DELETE":
                return jsonify(
                    prelabel_jobs.stop(request.args.get("project") or _json_body(optional=True).get("project"))
                )
            metrics.increment("prelabel", "requests")
            return jsonify(prelabel_jobs.start(_json_body())), 202
        except PrelabelRequestError as error:
            raise PayloadError(str(error)) from None
        except PrelabelConflict as error:
            metrics.increment("errors", "409")
            return jsonify({"error": str(error)}), 409

    @app.get("/versions")
    def versions():
        # Label Studio sends GET /versions with a JSON body {"project": "<id>.<timestamp>"}
        body = _json_body(optional=True)
        project = service.project_key(request.args.get("project") or body.get("project"))
        context = service.project_context(project)
        if context is None:
            return jsonify({"versions": []})
        return jsonify({"versions": [service.model_for(context.label_config, project).model_version]})
