"""The OpenAPI document's schemas as ``TypedDict`` s (types for type checkers;
at run time the client's answers are plain dicts).

Generated from ``sdk/openapi.json`` by datamodel-code-generator 0.89.0: do not edit.
Regenerate with ``python sdk/python/scripts/generate.py``, which runs::

    datamodel-codegen --input sdk/openapi.json --output sdk/python/hangar/_models.py --input-file-type openapi --output-model-type typing.TypedDict --target-python-version 3.10 --use-schema-description --reuse-model --disable-timestamp --formatters builtin
"""

# ruff: noqa
from __future__ import annotations

from typing import Any, Literal, TypeAlias

from typing_extensions import NotRequired, TypedDict


class AgentHealth(TypedDict):
    """
    `health` of an agent.
    """

    last_check: NotRequired[str | None]
    status: str
    uptime_percent: NotRequired[float | None]


class AgentMetricsSummary(TypedDict):
    """
    `metrics` of an agent.
    """

    avg_latency_ms: float
    error_rate_percent: float
    requests_24h: int


class AgentResources(TypedDict):
    """
    Resources in the Agents API's spelling.
    """

    cpu: float
    gpu: NotRequired[int | None]
    memory_mb: int


AgentStatus: TypeAlias = Literal['created', 'building', 'deploying', 'running', 'stopped', 'failed']


class ApiKeyObject(TypedDict):
    """
    An API key (its secret is only in the response that created it).
    """

    created_at: str
    id: str
    key: NotRequired[str | None]
    last_used_at: NotRequired[str | None]
    name: str
    prefix: str
    revoked_at: NotRequired[str | None]
    user_id: str


ArgvItem: TypeAlias = str


Argv: TypeAlias = list[ArgvItem]


class BuildLogLineObject(TypedDict):
    """
    One build log line.
    """

    message: str
    seq: int
    stream: str
    timestamp: str


BuildStatus: TypeAlias = Literal['queued', 'building', 'ready', 'failed']


class CreateKey(TypedDict, closed=True):
    """
    Body of `POST /v1/api_keys`.
    """

    name: str
    user_id: NotRequired[str | None]


class CreateOrganization(TypedDict, closed=True):
    """
    Body of `POST /v1/organizations`.
    """

    admin_email: str
    max_instances: NotRequired[int | None]
    name: str


class CreateToken1(TypedDict, closed=True):
    """
    Body of `POST /v1/tokens`: exactly one object the token reads.
    """

    agent_id: str
    build_id: NotRequired[None]
    instance_id: NotRequired[None]
    ttl_seconds: NotRequired[int | None]


class CreateToken2(TypedDict, closed=True):
    """
    Body of `POST /v1/tokens`: exactly one object the token reads.
    """

    agent_id: NotRequired[None]
    build_id: NotRequired[None]
    instance_id: str
    ttl_seconds: NotRequired[int | None]


class CreateToken3(TypedDict, closed=True):
    """
    Body of `POST /v1/tokens`: exactly one object the token reads.
    """

    agent_id: NotRequired[None]
    build_id: str
    instance_id: NotRequired[None]
    ttl_seconds: NotRequired[int | None]


CreateToken: TypeAlias = CreateToken1 | CreateToken2 | CreateToken3


class CreateUpload(TypedDict, closed=True):
    """
    Body of `POST /v1/uploads` (optional).
    """

    filename: NotRequired[str | None]


class CreateWebhook(TypedDict, closed=True):
    """
    Body of `POST /v1/webhooks`.
    """

    description: NotRequired[str | None]
    events: NotRequired[list[Literal['agent.deployed', 'agent.failed', 'agent.scaled', 'agent.health_changed', 'agent.policy_changed', 'instance.started', 'instance.stopped', 'instance.crashed', 'build.succeeded', 'build.failed', 'job.completed', 'job.failed']]]
    secret: NotRequired[str | None]
    url: str


class Deleted(TypedDict):
    """
    What deleting answers.
    """

    deleted: bool
    id: str


DeliveryStatus: TypeAlias = Literal['pending', 'delivered', 'failed']


DeploymentType: TypeAlias = Literal['HTTP_LONG_RUNNING', 'HTTP_COLD_START', 'STDIN']


DriverKind: TypeAlias = Literal['sandbox', 'docker', 'kubernetes']


class Egress1(TypedDict):
    """
    Only these: host names (`api.openai.com`, `*.github.com`, optionally
    with `:port`) and IPv4 addresses or networks (`10.0.0.0/8:5432`).
    """

    allow: list[str]


Egress: TypeAlias = Literal['open'] | Literal['none'] | Egress1


EndpointStatus: TypeAlias = Literal['DNS_PENDING', 'READY_TO_COLD_START', 'RUNNING', 'ERROR', 'NOT_FOUND', 'READY_TO_RECEIVE_REQUESTS', 'STOPPED']


class Endpoints(TypedDict):
    """
    `endpoints` of an agent.
    """

    base_url: str
    health: str
    invoke: str


class Data2(ApiKeyObject):
    """
    An API key (its secret is only in the response that created it).
    """


class Data3(TypedDict):
    """
    A build's log.
    """

    build_id: str
    logs: list[BuildLogLineObject]


class Data5(TypedDict):
    """
    A cloud.
    """

    base_url: str
    config: dict[str, Any]
    created_at: str
    driver: DriverKind
    id: str
    name: str


class Data7(Deleted):
    """
    What deleting answers.
    """


class Data8(TypedDict):
    """
    A webhook delivery as the API shows it.
    """

    attempts: int
    created_at: str
    delivered_at: NotRequired[str | None]
    event_id: str
    event_type: str
    id: str
    last_error: NotRequired[str | None]
    last_status_code: NotRequired[int | None]
    next_attempt_at: NotRequired[str | None]
    status: DeliveryStatus
    webhook_id: str


class Data13(TypedDict):
    """
    A secret (never its value).
    """

    created_at: str
    id: str
    name: str
    updated_at: str
    value: str


class Data14(TypedDict):
    """
    What ending a session answers.
    """

    ended: bool
    id: str
    replica_id: str
    replica_stopped: bool


class Data15(TypedDict):
    """
    A live session: the replica that serves every request naming it.
    """

    agent_id: str
    expires_at: str
    id: str
    instance_id: str
    last_active_at: str
    replica_changes: int
    replica_id: str
    requests: int
    started_at: str


class Data16(TypedDict):
    """
    A stream token as created.
    """

    expires_at: str
    object_id: str
    permissions: list[str]
    token: str


class Data17(TypedDict):
    """
    An upload slot.
    """

    expires_at: str
    id: str
    upload_url: str


class Data18(TypedDict):
    """
    What a completed upload answers.
    """

    completed_at: str
    id: str
    size_bytes: int


class Datum(ApiKeyObject):
    """
    An API key (its secret is only in the response that created it).
    """


class Datum1(Data5):
    """
    A cloud.
    """


class Datum4(Data13):
    """
    A secret (never its value).
    """


class Datum5(Data15):
    """
    A live session: the replica that serves every request naming it.
    """


class Datum7(TypedDict):
    """
    A webhook endpoint (its secret only in the response that created it).
    """

    created_at: str
    description: NotRequired[str | None]
    enabled: bool
    events: list[str]
    id: str
    secret: NotRequired[str | None]
    updated_at: str
    url: str


class Data20(Datum7):
    """
    A webhook endpoint (its secret only in the response that created it).
    """


class ErrorObject(TypedDict):
    """
    The `error` object of the envelope.
    """

    build_status: NotRequired[str | None]
    code: str
    current_status: NotRequired[str | None]
    details: NotRequired[dict[str, Any] | None]
    driver: NotRequired[str | None]
    field: NotRequired[str | None]
    message: str
    request_id: NotRequired[str | None]
    retry_after_seconds: NotRequired[int | None]


class EventObject(TypedDict):
    """
    An event as the API shows it.
    """

    created_at: str
    data: dict[str, Any]
    id: str
    subject: str
    type: str


class HealthChecks(TypedDict):
    """
    `health_checks` of the status endpoint.
    """

    last_check: NotRequired[str | None]
    response_time_ms: NotRequired[int | None]
    status: str


class Injection(TypedDict, closed=True):
    """
    Headers the egress proxy adds to requests to one host.
    """

    headers: dict[str, str]
    host: str


class InstanceMetrics(TypedDict):
    """
    `metrics` of an instance, from its replicas (zero while none has run).
    """

    cpu_usage_percent: float
    memory_usage_mb: int
    network_rx_bytes: int
    network_tx_bytes: int
    requests_total: int
    uptime_seconds: int


class InstanceResources(TypedDict):
    """
    Resources in the Instances API's spelling.
    """

    cpu: str
    cpu_limit: NotRequired[str | None]
    memory: str
    memory_limit: NotRequired[str | None]


InstanceStatus: TypeAlias = Literal['starting', 'running', 'stopping', 'stopped', 'error']


class InvokeOptions(TypedDict, closed=True):
    """
    `options` of an invocation.
    """

    headers: NotRequired[dict[str, str]]
    session_id: NotRequired[str | None]
    timeout: NotRequired[float | None]


InvokeRequest = TypedDict(
    'InvokeRequest',
    {
        'async': NotRequired[bool],
        'input': NotRequired[dict[str, Any]],
        'options': NotRequired[InvokeOptions],
    },
    closed=True,
)


JobStatus: TypeAlias = Literal['pending', 'running', 'completed', 'failed', 'cancelled']


class Datum10(Data8):
    """
    A webhook delivery as the API shows it.
    """


class Datum11(EventObject):
    """
    An event as the API shows it.
    """


class Datum12(TypedDict):
    """
    A job.
    """

    agent_id: str
    attempts: int
    created_at: str
    duration_ms: NotRequired[int | None]
    error: NotRequired[dict[str, Any] | None]
    finished_at: NotRequired[str | None]
    id: str
    idempotency_key: NotRequired[str | None]
    instance_id: NotRequired[str | None]
    job_id: str
    latency_ms: NotRequired[int | None]
    mode: str
    output: NotRequired[dict[str, Any] | None]
    poll_url: str
    started_at: NotRequired[str | None]
    status: JobStatus
    usage: NotRequired[dict[str, Any] | None]


class Meta(TypedDict):
    """
    `meta` of every `/v1` response.
    """

    request_id: str


class MetricPoint(TypedDict):
    """
    One step of a series. Every field is always there; the unknowns are
    `null`.
    """

    at: str
    cpu_percent: float | None
    error_rate_percent: float
    errors: int
    memory_mb: float | None
    p50_latency_ms: float | None
    p95_latency_ms: float | None
    requests: int


class NetworkConfig(TypedDict, closed=True):
    """
    What an agent's replicas may reach besides their own instance's
    replicas: outside the host (`egress`), other agents of the organization
    (`reach`), and headers the egress proxy adds for them (`inject`).
    """

    egress: NotRequired[Egress | None]
    inject: NotRequired[list[Injection]]
    reach: NotRequired[list[str]]


class NodeCapacity(TypedDict):
    """
    What a node has.
    """

    cpu_millis: int
    memory_bytes: int


class NodeObject(TypedDict):
    """
    A server on this database.
    """

    address: str
    capacity: NodeCapacity
    draining: bool
    draining_since: NotRequired[str | None]
    id: str
    last_heartbeat_at: str
    replicas: int
    started_at: str
    status: str
    version: str


class Pagination(TypedDict):
    """
    A page's position.
    """

    has_more: bool
    limit: int
    next_cursor: NotRequired[str | None]


class PutSecret(TypedDict, closed=True):
    """
    Body of `POST /v1/secrets`.
    """

    name: str
    value: str


class Quotas(TypedDict):
    """
    An organization's quotas.
    """

    max_instances: int


class RegistryCredentials(TypedDict, closed=True):
    """
    Registry credentials of a `docker` source.
    """

    password: str
    username: str


class ResourceUsage(TypedDict):
    """
    `resource_usage` of the status endpoint.
    """

    cpu_percent: float
    memory_mb: int
    network_rx_bytes: int
    network_tx_bytes: int


class ResourcesInput(TypedDict, closed=True):
    """
    Resources as a request gives them, in either API's spelling. Absent fields keep
    their current (or default) value.
    """

    cpu: NotRequired[float | str | None]
    cpu_limit: NotRequired[float | str | None]
    gpu: NotRequired[int | None]
    memory: NotRequired[int | str | None]
    memory_limit: NotRequired[int | str | None]
    memory_mb: NotRequired[int | None]


Role: TypeAlias = Literal['admin', 'member']


class Runtime(TypedDict, closed=True):
    """
    Language runtime of an agent (`{"language": "python", "version": "3.11"}`).
    """

    framework: NotRequired[str | None]
    language: NotRequired[str | None]
    version: NotRequired[str | None]


class RuntimeConfig(TypedDict):
    """
    How a replica is run and reached (the Instances API's `config`).
    """

    enable_http: bool
    health_path: str
    invoke_path: str
    liveness_failures: NotRequired[int | None]
    long_running: bool
    network: NotRequired[NetworkConfig | None]
    port: int
    session_idle_timeout_seconds: NotRequired[int | None]
    start_timeout_seconds: NotRequired[int | None]
    stdin_enabled: bool


class ScalingInput(TypedDict, closed=True):
    """
    Scaling as a request gives it.
    """

    max_instances: NotRequired[int | None]
    min_instances: NotRequired[int | None]
    target_cpu_percent: NotRequired[int | None]


class ScalingObject(TypedDict):
    """
    `scaling` of an agent.
    """

    current_instances: int
    max_instances: int
    min_instances: int
    target_cpu_percent: int


class SecretObject(Data13):
    """
    A secret (never its value).
    """


class SessionEnded(Data14):
    """
    What ending a session answers.
    """


class SessionObject(Data15):
    """
    A live session: the replica that serves every request naming it.
    """


class Source1(TypedDict, closed=True):
    """
    A git repository: `user/repo` on GitHub, or any git URL.
    """

    branch: NotRequired[str | None]
    commit: NotRequired[str | None]
    path: NotRequired[str | None]
    repo: str
    type: Literal['github']


class Source2(TypedDict, closed=True):
    """
    An OCI image.
    """

    credentials: NotRequired[RegistryCredentials | None]
    image: str
    type: Literal['docker']


class Source3(TypedDict, closed=True):
    """
    An archive uploaded through `POST /v1/uploads`.
    """

    archive_url: NotRequired[str | None]
    type: Literal['upload']
    upload_id: NotRequired[str | None]


Source: TypeAlias = Source1 | Source2 | Source3


class StdinInput(TypedDict, closed=True):
    """
    Body of `POST …/stdin`.
    """

    input: str


class TokenObject(Data16):
    """
    A stream token as created.
    """


class UpdateOrganization(TypedDict, closed=True):
    """
    Body of `PATCH /v1/organizations/{id}`.
    """

    max_instances: NotRequired[int | None]
    name: NotRequired[str | None]


class UpdateWebhook(TypedDict, closed=True):
    """
    Body of `PATCH /v1/webhooks/{id}`.
    """

    description: NotRequired[str | None]
    enabled: NotRequired[bool | None]
    events: NotRequired[list[Literal['agent.deployed', 'agent.failed', 'agent.scaled', 'agent.health_changed', 'agent.policy_changed', 'instance.started', 'instance.stopped', 'instance.crashed', 'build.succeeded', 'build.failed', 'job.completed', 'job.failed']] | None]
    url: NotRequired[str | None]


class UploadObject(Data17):
    """
    An upload slot.
    """


class UploadReceived(Data18):
    """
    What a completed upload answers.
    """


class UserObject(TypedDict):
    """
    A user.
    """

    created_at: str
    email: str
    id: str
    name: NotRequired[str | None]
    organization_id: str
    role: Role


class WebhookObject(Datum7):
    """
    A webhook endpoint (its secret only in the response that created it).
    """


class AgentMetrics(TypedDict):
    """
    An agent's metrics.
    """

    agent_id: str
    avg_latency_ms: float
    cpu_percent: float
    error_rate_percent: float
    memory_mb: int
    replicas: int
    requests: int
    requests_24h: int
    series: list[MetricPoint]
    step_seconds: int
    uptime_percent: NotRequired[float | None]
    window: str


class AgentObject(TypedDict):
    """
    An agent as the Agents API shows it.
    """

    cloud_id: str
    config: RuntimeConfig
    created_at: str
    deployed_at: NotRequired[str | None]
    display_name: NotRequired[str | None]
    endpoints: Endpoints
    environment: dict[str, str]
    health: AgentHealth
    id: str
    instance_id: NotRequired[str | None]
    latest_build_id: NotRequired[str | None]
    metadata: dict[str, str]
    metrics: AgentMetricsSummary
    name: str
    resources: AgentResources
    runtime: Runtime
    scaling: ScalingObject
    source: Source
    status: AgentStatus
    updated_at: str
    version: NotRequired[str | None]


class BuildLog(Data3):
    """
    A build's log.
    """


class BuildObject(TypedDict):
    """
    A build.
    """

    agent_id: str
    artifact: NotRequired[str | None]
    created_at: str
    finished_at: NotRequired[str | None]
    id: str
    reason: NotRequired[str | None]
    source: Source
    started_at: NotRequired[str | None]
    status: BuildStatus


class CloudObject(Data5):
    """
    A cloud.
    """


class ConfigInput(TypedDict, closed=True):
    """
    Runtime configuration as a request gives it (the Instances API's `config`, and
    the Agents API's optional `config`).
    """

    deployment_type: NotRequired[DeploymentType | None]
    enable_http: NotRequired[bool | None]
    health_path: NotRequired[str | None]
    invoke_path: NotRequired[str | None]
    liveness_failures: NotRequired[int | None]
    long_running: NotRequired[bool | None]
    network: NotRequired[NetworkConfig | None]
    port: NotRequired[int | None]
    replicas: NotRequired[int | None]
    session_idle_timeout_seconds: NotRequired[int | None]
    start_timeout_seconds: NotRequired[int | None]
    stdin_enabled: NotRequired[bool | None]


class CreateAgent(TypedDict, closed=True):
    """
    Body of `POST /v1/agents`.
    """

    cloud_id: str
    config: NotRequired[ConfigInput]
    display_name: NotRequired[str | None]
    environment: NotRequired[dict[str, str]]
    metadata: NotRequired[dict[str, str]]
    name: str
    resources: NotRequired[ResourcesInput]
    runtime: NotRequired[Runtime]
    scaling: NotRequired[ScalingInput]
    source: Source
    version: NotRequired[str | None]


class CreateCloud(TypedDict, closed=True):
    """
    Body of `POST /v1/clouds`.
    """

    base_url: NotRequired[str | None]
    config: NotRequired[dict[str, Any]]
    driver: DriverKind
    name: str


class CreateInstance(TypedDict, closed=True):
    """
    Body of `POST /instances`.
    """

    agent_id: str
    build_id: str
    config: NotRequired[ConfigInput]
    env_vars: NotRequired[dict[str, str]]
    name: str
    organization_id: str
    resources: NotRequired[ResourcesInput]


class CreateUser(TypedDict, closed=True):
    """
    Body of `POST /v1/users`.
    """

    email: str
    name: NotRequired[str | None]
    role: NotRequired[Role | None]


class DeliveryObject(Data8):
    """
    A webhook delivery as the API shows it.
    """


class Deployment(TypedDict):
    """
    `deployment` of an instance.
    """

    deployment_type: DeploymentType
    replicas: int
    resource_name: str
    restart_count: int
    url: str


class Data(AgentMetrics):
    """
    An agent's metrics.
    """


class EnvelopeAgentMetrics(TypedDict):
    """
    `{success, data, meta}`.
    """

    data: Data
    meta: Meta
    success: bool


class Data1(AgentObject):
    """
    An agent as the Agents API shows it.
    """


class EnvelopeAgentObject(TypedDict):
    """
    `{success, data, meta}`.
    """

    data: Data1
    meta: Meta
    success: bool


class EnvelopeApiKeyObject(TypedDict):
    """
    `{success, data, meta}`.
    """

    data: Data2
    meta: Meta
    success: bool


class EnvelopeBuildLog(TypedDict):
    """
    `{success, data, meta}`.
    """

    data: Data3
    meta: Meta
    success: bool


class Data4(BuildObject):
    """
    A build.
    """


class EnvelopeBuildObject(TypedDict):
    """
    `{success, data, meta}`.
    """

    data: Data4
    meta: Meta
    success: bool


class EnvelopeCloudObject(TypedDict):
    """
    `{success, data, meta}`.
    """

    data: Data5
    meta: Meta
    success: bool


class EnvelopeDeleted(TypedDict):
    """
    `{success, data, meta}`.
    """

    data: Data7
    meta: Meta
    success: bool


class EnvelopeDeliveryObject(TypedDict):
    """
    `{success, data, meta}`.
    """

    data: Data8
    meta: Meta
    success: bool


class Data9(TypedDict):
    """
    An instance's metric history.
    """

    instance_id: str
    series: list[MetricPoint]
    step_seconds: int
    window: str


class EnvelopeInstanceMetricHistory(TypedDict):
    """
    `{success, data, meta}`.
    """

    data: Data9
    meta: Meta
    success: bool


class Data10(Datum12):
    """
    A job.
    """


class EnvelopeJobObject(TypedDict):
    """
    `{success, data, meta}`.
    """

    data: Data10
    meta: Meta
    success: bool


class Data11(NodeObject):
    """
    A server on this database.
    """


class EnvelopeNodeObject(TypedDict):
    """
    `{success, data, meta}`.
    """

    data: Data11
    meta: Meta
    success: bool


class Data12(TypedDict):
    """
    An organization.
    """

    created_at: str
    id: str
    is_operator: bool
    name: str
    quotas: Quotas


class EnvelopeOrganizationObject(TypedDict):
    """
    `{success, data, meta}`.
    """

    data: Data12
    meta: Meta
    success: bool


class EnvelopeSecretObject(TypedDict):
    """
    `{success, data, meta}`.
    """

    data: Data13
    meta: Meta
    success: bool


class EnvelopeSessionEnded(TypedDict):
    """
    `{success, data, meta}`.
    """

    data: Data14
    meta: Meta
    success: bool


class EnvelopeSessionObject(TypedDict):
    """
    `{success, data, meta}`.
    """

    data: Data15
    meta: Meta
    success: bool


class EnvelopeTokenObject(TypedDict):
    """
    `{success, data, meta}`.
    """

    data: Data16
    meta: Meta
    success: bool


class EnvelopeUploadObject(TypedDict):
    """
    `{success, data, meta}`.
    """

    data: Data17
    meta: Meta
    success: bool


class EnvelopeUploadReceived(TypedDict):
    """
    `{success, data, meta}`.
    """

    data: Data18
    meta: Meta
    success: bool


class Data19(UserObject):
    """
    A user.
    """


class EnvelopeUserObject(TypedDict):
    """
    `{success, data, meta}`.
    """

    data: Data19
    meta: Meta
    success: bool


class EnvelopeVecApiKeyObject(TypedDict):
    """
    `{success, data, meta}`.
    """

    data: list[Datum]
    meta: Meta
    success: bool


class EnvelopeVecCloudObject(TypedDict):
    """
    `{success, data, meta}`.
    """

    data: list[Datum1]
    meta: Meta
    success: bool


class Datum2(NodeObject):
    """
    A server on this database.
    """


class EnvelopeVecNodeObject(TypedDict):
    """
    `{success, data, meta}`.
    """

    data: list[Datum2]
    meta: Meta
    success: bool


class Datum3(Data12):
    """
    An organization.
    """


class EnvelopeVecOrganizationObject(TypedDict):
    """
    `{success, data, meta}`.
    """

    data: list[Datum3]
    meta: Meta
    success: bool


class EnvelopeVecSecretObject(TypedDict):
    """
    `{success, data, meta}`.
    """

    data: list[Datum4]
    meta: Meta
    success: bool


class EnvelopeVecSessionObject(TypedDict):
    """
    `{success, data, meta}`.
    """

    data: list[Datum5]
    meta: Meta
    success: bool


class Datum6(UserObject):
    """
    A user.
    """


class EnvelopeVecUserObject(TypedDict):
    """
    `{success, data, meta}`.
    """

    data: list[Datum6]
    meta: Meta
    success: bool


class EnvelopeVecWebhookObject(TypedDict):
    """
    `{success, data, meta}`.
    """

    data: list[Datum7]
    meta: Meta
    success: bool


class EnvelopeWebhookObject(TypedDict):
    """
    `{success, data, meta}`.
    """

    data: Data20
    meta: Meta
    success: bool


class Error(TypedDict):
    """
    The envelope every error answers in, as the document shows it: `code` and
    `message` always, the other fields where the code says so.
    """

    error: ErrorObject
    success: bool


class InstanceConfig(RuntimeConfig):
    """
    `config` of an instance: the runtime configuration and the replicas wanted.
    """

    replicas: int


class InstanceMetricHistory(Data9):
    """
    An instance's metric history.
    """


class InstanceObject(TypedDict):
    """
    An instance as the Instances API shows it.
    """

    agent_id: str
    build_id: str
    config: InstanceConfig
    created_at: str
    deployment: Deployment
    env_vars: dict[str, str]
    id: str
    metrics: InstanceMetrics
    name: str
    organization_id: str
    resources: InstanceResources
    status: InstanceStatus
    status_reason: NotRequired[str | None]
    updated_at: str
    user_id: str


class InstanceStatusObject(TypedDict):
    """
    `GET /instances/status/{org_id}/{instance_id}`.
    """

    created_at: int
    health_checks: HealthChecks
    replicas: int
    resource_usage: ResourceUsage
    restart_count: int
    status: EndpointStatus


class JobObject(Datum12):
    """
    A job.
    """


class Datum8(AgentObject):
    """
    An agent as the Agents API shows it.
    """


class ListEnvelopeAgentObject(TypedDict):
    """
    `{success, data: [...], pagination, meta}`.
    """

    data: list[Datum8]
    meta: Meta
    pagination: Pagination
    success: bool


class Datum9(BuildObject):
    """
    A build.
    """


class ListEnvelopeBuildObject(TypedDict):
    """
    `{success, data: [...], pagination, meta}`.
    """

    data: list[Datum9]
    meta: Meta
    pagination: Pagination
    success: bool


class ListEnvelopeDeliveryObject(TypedDict):
    """
    `{success, data: [...], pagination, meta}`.
    """

    data: list[Datum10]
    meta: Meta
    pagination: Pagination
    success: bool


class ListEnvelopeEventObject(TypedDict):
    """
    `{success, data: [...], pagination, meta}`.
    """

    data: list[Datum11]
    meta: Meta
    pagination: Pagination
    success: bool


class ListEnvelopeJobObject(TypedDict):
    """
    `{success, data: [...], pagination, meta}`.
    """

    data: list[Datum12]
    meta: Meta
    pagination: Pagination
    success: bool


class Me(TypedDict):
    """
    `GET /v1/me`.
    """

    api_key_id: str
    email: str
    is_operator: bool
    organization_id: str
    role: Role
    user_id: str


class OrganizationObject(Data12):
    """
    An organization.
    """


class RedeployRequest(TypedDict, closed=True):
    """
    Body of `POST /v1/agents/{id}/redeploy` (optional).
    """

    source: NotRequired[Source | None]


class UpdateAgent(TypedDict, closed=True):
    """
    Body of `PATCH /v1/agents/{id}`: fields to change. `environment` and `metadata`
    are merged (a `null` value removes the key); the other objects replace the
    fields they name.
    """

    config: NotRequired[ConfigInput | None]
    display_name: NotRequired[str | None]
    environment: NotRequired[dict[str, str | None]]
    metadata: NotRequired[dict[str, str | None]]
    name: NotRequired[str | None]
    resources: NotRequired[ResourcesInput | None]
    runtime: NotRequired[Runtime | None]
    scaling: NotRequired[ScalingInput | None]
    source: NotRequired[Source | None]
    version: NotRequired[str | None]


class UpdateInstance(TypedDict, closed=True):
    """
    Body of `PUT /instances/{instance_id}`: only the fields to change.
    """

    config: NotRequired[ConfigInput | None]
    env_vars: NotRequired[dict[str, str]]
    name: NotRequired[str | None]
    resources: NotRequired[ResourcesInput | None]


class CreatedOrganization(TypedDict):
    """
    A new organization with its first admin and their key (shown once).
    """

    admin: UserObject
    api_key: ApiKeyObject
    organization: OrganizationObject


class Data6(CreatedOrganization):
    """
    A new organization with its first admin and their key (shown once).
    """


class EnvelopeCreatedOrganization(TypedDict):
    """
    `{success, data, meta}`.
    """

    data: Data6
    meta: Meta
    success: bool


class InstanceList(TypedDict):
    """
    `GET /instances/by_org_id/{org_id}`.
    """

    data: list[InstanceObject]
    pagination: Pagination
