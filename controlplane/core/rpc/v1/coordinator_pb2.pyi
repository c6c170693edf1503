from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class WorkerInfo(_message.Message):
    __slots__ = ("worker_id", "host", "pid", "labels", "max_active_runs", "started_at_ms")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    MAX_ACTIVE_RUNS_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    host: str
    pid: int
    labels: _containers.ScalarMap[str, str]
    max_active_runs: int
    started_at_ms: int
    def __init__(self, worker_id: _Optional[str] = ..., host: _Optional[str] = ..., pid: _Optional[int] = ..., labels: _Optional[_Mapping[str, str]] = ..., max_active_runs: _Optional[int] = ..., started_at_ms: _Optional[int] = ...) -> None: ...

class PollRequest(_message.Message):
    __slots__ = ("worker", "free_slots", "wait_ms")
    WORKER_FIELD_NUMBER: _ClassVar[int]
    FREE_SLOTS_FIELD_NUMBER: _ClassVar[int]
    WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    worker: WorkerInfo
    free_slots: int
    wait_ms: int
    def __init__(self, worker: _Optional[_Union[WorkerInfo, _Mapping]] = ..., free_slots: _Optional[int] = ..., wait_ms: _Optional[int] = ...) -> None: ...

class CompletedStep(_message.Message):
    __slots__ = ("name", "status", "exit_code", "output_value")
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_VALUE_FIELD_NUMBER: _ClassVar[int]
    name: str
    status: str
    exit_code: int
    output_value: str
    def __init__(self, name: _Optional[str] = ..., status: _Optional[str] = ..., exit_code: _Optional[int] = ..., output_value: _Optional[str] = ...) -> None: ...

class Task(_message.Message):
    __slots__ = ("dag_run_id", "dag_name", "attempt", "attempt_token", "definition", "params", "root_dag_run_id", "root_dag_name", "parent_dag_run_id", "parent_dag_name", "completed_steps", "source")
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    DAG_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    DAG_NAME_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_TOKEN_FIELD_NUMBER: _ClassVar[int]
    DEFINITION_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    ROOT_DAG_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ROOT_DAG_NAME_FIELD_NUMBER: _ClassVar[int]
    PARENT_DAG_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    PARENT_DAG_NAME_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_STEPS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    dag_run_id: str
    dag_name: str
    attempt: int
    attempt_token: str
    definition: str
    params: _containers.ScalarMap[str, str]
    root_dag_run_id: str
    root_dag_name: str
    parent_dag_run_id: str
    parent_dag_name: str
    completed_steps: _containers.RepeatedCompositeFieldContainer[CompletedStep]
    source: str
    def __init__(self, dag_run_id: _Optional[str] = ..., dag_name: _Optional[str] = ..., attempt: _Optional[int] = ..., attempt_token: _Optional[str] = ..., definition: _Optional[str] = ..., params: _Optional[_Mapping[str, str]] = ..., root_dag_run_id: _Optional[str] = ..., root_dag_name: _Optional[str] = ..., parent_dag_run_id: _Optional[str] = ..., parent_dag_name: _Optional[str] = ..., completed_steps: _Optional[_Iterable[_Union[CompletedStep, _Mapping]]] = ..., source: _Optional[str] = ...) -> None: ...

class PollResponse(_message.Message):
    __slots__ = ("tasks",)
    TASKS_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[Task]
    def __init__(self, tasks: _Optional[_Iterable[_Union[Task, _Mapping]]] = ...) -> None: ...

class RunningTask(_message.Message):
    __slots__ = ("dag_run_id", "attempt_token", "started_at_ms")
    DAG_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_TOKEN_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    dag_run_id: str
    attempt_token: str
    started_at_ms: int
    def __init__(self, dag_run_id: _Optional[str] = ..., attempt_token: _Optional[str] = ..., started_at_ms: _Optional[int] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("worker", "running", "stopping")
    WORKER_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    STOPPING_FIELD_NUMBER: _ClassVar[int]
    worker: WorkerInfo
    running: _containers.RepeatedCompositeFieldContainer[RunningTask]
    stopping: bool
    def __init__(self, worker: _Optional[_Union[WorkerInfo, _Mapping]] = ..., running: _Optional[_Iterable[_Union[RunningTask, _Mapping]]] = ..., stopping: _Optional[bool] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("cancel_attempt_tokens", "draining")
    CANCEL_ATTEMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    cancel_attempt_tokens: _containers.RepeatedScalarFieldContainer[str]
    draining: bool
    def __init__(self, cancel_attempt_tokens: _Optional[_Iterable[str]] = ..., draining: _Optional[bool] = ...) -> None: ...

class StepStarted(_message.Message):
    __slots__ = ("step", "at_ms", "retry")
    STEP_FIELD_NUMBER: _ClassVar[int]
    AT_MS_FIELD_NUMBER: _ClassVar[int]
    RETRY_FIELD_NUMBER: _ClassVar[int]
    step: str
    at_ms: int
    retry: int
    def __init__(self, step: _Optional[str] = ..., at_ms: _Optional[int] = ..., retry: _Optional[int] = ...) -> None: ...

class StepLog(_message.Message):
    __slots__ = ("step", "stream", "data", "offset", "retry")
    STEP_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    RETRY_FIELD_NUMBER: _ClassVar[int]
    step: str
    stream: str
    data: bytes
    offset: int
    retry: int
    def __init__(self, step: _Optional[str] = ..., stream: _Optional[str] = ..., data: _Optional[bytes] = ..., offset: _Optional[int] = ..., retry: _Optional[int] = ...) -> None: ...

class StepFinished(_message.Message):
    __slots__ = ("step", "status", "exit_code", "at_ms", "output_value", "error")
    STEP_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    AT_MS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_VALUE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    step: str
    status: str
    exit_code: int
    at_ms: int
    output_value: str
    error: str
    def __init__(self, step: _Optional[str] = ..., status: _Optional[str] = ..., exit_code: _Optional[int] = ..., at_ms: _Optional[int] = ..., output_value: _Optional[str] = ..., error: _Optional[str] = ...) -> None: ...

class RunFinished(_message.Message):
    __slots__ = ("status", "error", "outputs", "at_ms", "unstarted_status")
    class OutputsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    AT_MS_FIELD_NUMBER: _ClassVar[int]
    UNSTARTED_STATUS_FIELD_NUMBER: _ClassVar[int]
    status: str
    error: str
    outputs: _containers.ScalarMap[str, str]
    at_ms: int
    unstarted_status: str
    def __init__(self, status: _Optional[str] = ..., error: _Optional[str] = ..., outputs: _Optional[_Mapping[str, str]] = ..., at_ms: _Optional[int] = ..., unstarted_status: _Optional[str] = ...) -> None: ...

class AttemptStarted(_message.Message):
    __slots__ = ("at_ms",)
    AT_MS_FIELD_NUMBER: _ClassVar[int]
    at_ms: int
    def __init__(self, at_ms: _Optional[int] = ...) -> None: ...

class RunEvent(_message.Message):
    __slots__ = ("seq", "dag_run_id", "attempt_token", "attempt_started", "step_started", "step_log", "step_finished", "run_finished")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    DAG_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_TOKEN_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_STARTED_FIELD_NUMBER: _ClassVar[int]
    STEP_STARTED_FIELD_NUMBER: _ClassVar[int]
    STEP_LOG_FIELD_NUMBER: _ClassVar[int]
    STEP_FINISHED_FIELD_NUMBER: _ClassVar[int]
    RUN_FINISHED_FIELD_NUMBER: _ClassVar[int]
    seq: int
    dag_run_id: str
    attempt_token: str
    attempt_started: AttemptStarted
    step_started: StepStarted
    step_log: StepLog
    step_finished: StepFinished
    run_finished: RunFinished
    def __init__(self, seq: _Optional[int] = ..., dag_run_id: _Optional[str] = ..., attempt_token: _Optional[str] = ..., attempt_started: _Optional[_Union[AttemptStarted, _Mapping]] = ..., step_started: _Optional[_Union[StepStarted, _Mapping]] = ..., step_log: _Optional[_Union[StepLog, _Mapping]] = ..., step_finished: _Optional[_Union[StepFinished, _Mapping]] = ..., run_finished: _Optional[_Union[RunFinished, _Mapping]] = ...) -> None: ...

class ReportRequest(_message.Message):
    __slots__ = ("worker_id", "events", "want_tasks")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    WANT_TASKS_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    events: _containers.RepeatedCompositeFieldContainer[RunEvent]
    want_tasks: int
    def __init__(self, worker_id: _Optional[str] = ..., events: _Optional[_Iterable[_Union[RunEvent, _Mapping]]] = ..., want_tasks: _Optional[int] = ...) -> None: ...

class ReportResponse(_message.Message):
    __slots__ = ("applied", "rejected_attempt_tokens", "tasks")
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    REJECTED_ATTEMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    applied: int
    rejected_attempt_tokens: _containers.RepeatedScalarFieldContainer[str]
    tasks: _containers.RepeatedCompositeFieldContainer[Task]
    def __init__(self, applied: _Optional[int] = ..., rejected_attempt_tokens: _Optional[_Iterable[str]] = ..., tasks: _Optional[_Iterable[_Union[Task, _Mapping]]] = ...) -> None: ...

class StartChildRequest(_message.Message):
    __slots__ = ("worker_id", "parent_dag_run_id", "parent_attempt_token", "step", "item_index", "dag_name", "params", "worker_selector")
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class WorkerSelectorEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    PARENT_DAG_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    PARENT_ATTEMPT_TOKEN_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    ITEM_INDEX_FIELD_NUMBER: _ClassVar[int]
    DAG_NAME_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    WORKER_SELECTOR_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    parent_dag_run_id: str
    parent_attempt_token: str
    step: str
    item_index: int
    dag_name: str
    params: _containers.ScalarMap[str, str]
    worker_selector: _containers.ScalarMap[str, str]
    def __init__(self, worker_id: _Optional[str] = ..., parent_dag_run_id: _Optional[str] = ..., parent_attempt_token: _Optional[str] = ..., step: _Optional[str] = ..., item_index: _Optional[int] = ..., dag_name: _Optional[str] = ..., params: _Optional[_Mapping[str, str]] = ..., worker_selector: _Optional[_Mapping[str, str]] = ...) -> None: ...

class StartChildResponse(_message.Message):
    __slots__ = ("dag_run_id",)
    DAG_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    dag_run_id: str
    def __init__(self, dag_run_id: _Optional[str] = ...) -> None: ...

class GetRunStatusRequest(_message.Message):
    __slots__ = ("dag_run_id", "worker_id")
    DAG_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    dag_run_id: str
    worker_id: str
    def __init__(self, dag_run_id: _Optional[str] = ..., worker_id: _Optional[str] = ...) -> None: ...

class GetRunStatusResponse(_message.Message):
    __slots__ = ("found", "status", "error", "outputs")
    class OutputsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    FOUND_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    found: bool
    status: str
    error: str
    outputs: _containers.ScalarMap[str, str]
    def __init__(self, found: _Optional[bool] = ..., status: _Optional[str] = ..., error: _Optional[str] = ..., outputs: _Optional[_Mapping[str, str]] = ...) -> None: ...

class CancelRunRequest(_message.Message):
    __slots__ = ("dag_run_id", "worker_id")
    DAG_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    dag_run_id: str
    worker_id: str
    def __init__(self, dag_run_id: _Optional[str] = ..., worker_id: _Optional[str] = ...) -> None: ...

class CancelRunResponse(_message.Message):
    __slots__ = ("accepted", "error")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    error: str
    def __init__(self, accepted: _Optional[bool] = ..., error: _Optional[str] = ...) -> None: ...

class ListWorkersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WorkerStatus(_message.Message):
    __slots__ = ("info", "health_status", "last_heartbeat_ms", "busy", "draining", "running")
    INFO_FIELD_NUMBER: _ClassVar[int]
    HEALTH_STATUS_FIELD_NUMBER: _ClassVar[int]
    LAST_HEARTBEAT_MS_FIELD_NUMBER: _ClassVar[int]
    BUSY_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    info: WorkerInfo
    health_status: str
    last_heartbeat_ms: int
    busy: int
    draining: bool
    running: _containers.RepeatedCompositeFieldContainer[RunningTask]
    def __init__(self, info: _Optional[_Union[WorkerInfo, _Mapping]] = ..., health_status: _Optional[str] = ..., last_heartbeat_ms: _Optional[int] = ..., busy: _Optional[int] = ..., draining: _Optional[bool] = ..., running: _Optional[_Iterable[_Union[RunningTask, _Mapping]]] = ...) -> None: ...

class ListWorkersResponse(_message.Message):
    __slots__ = ("workers",)
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    workers: _containers.RepeatedCompositeFieldContainer[WorkerStatus]
    def __init__(self, workers: _Optional[_Iterable[_Union[WorkerStatus, _Mapping]]] = ...) -> None: ...

class WakeRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WakeResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
