"""RabbitMQ for requests and statuses: service side (consumer, dispatcher) and caller side."""

from std_daq_service.broker.audit import AUDIT_STREAM, AuditTrail, Caller, parse_time, read_history
from std_daq_service.broker.call_result import CallResult
from std_daq_service.broker.caller import RequestCaller
from std_daq_service.broker.consumer import RequestConsumer
from std_daq_service.broker.dispatcher import Dispatcher, Handler, RequestContext
from std_daq_service.broker.shared_caller import SharedCaller
from std_daq_service.broker.status_store import StatusStore
from std_daq_service.broker.topology import (
    DEFAULT_BROKER_URL,
    KILL_EXCHANGE,
    REQUEST_EXCHANGE,
    STATUS_EXCHANGE,
    broker_url,
    connection_parameters,
    declare_service_queues,
)

__all__ = [
    "AUDIT_STREAM",
    "AuditTrail",
    "Caller",
    "parse_time",
    "read_history",
    "SharedCaller",
    "CallResult",
    "DEFAULT_BROKER_URL",
    "Dispatcher",
    "Handler",
    "KILL_EXCHANGE",
    "REQUEST_EXCHANGE",
    "RequestCaller",
    "RequestConsumer",
    "RequestContext",
    "STATUS_EXCHANGE",
    "StatusStore",
    "broker_url",
    "connection_parameters",
    "declare_service_queues",
]
