import datetime

from google.protobuf import empty_pb2 as _empty_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    UP: _ClassVar[State]
    DOWN: _ClassVar[State]
    REFRESH_REQUESTED: _ClassVar[State]
    RESELECT_REQUESTED: _ClassVar[State]

class ConnectionEventType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INITIAL_STATE_TRANSFER: _ClassVar[ConnectionEventType]
    UPDATE: _ClassVar[ConnectionEventType]
    DELETE: _ClassVar[ConnectionEventType]
UP: State
DOWN: State
REFRESH_REQUESTED: State
RESELECT_REQUESTED: State
INITIAL_STATE_TRANSFER: ConnectionEventType
UPDATE: ConnectionEventType
DELETE: ConnectionEventType

class NetworkServiceRequest(_message.Message):
    __slots__ = ("connection", "mechanism_preferences")
    CONNECTION_FIELD_NUMBER: _ClassVar[int]
    MECHANISM_PREFERENCES_FIELD_NUMBER: _ClassVar[int]
    connection: Connection
    mechanism_preferences: _containers.RepeatedCompositeFieldContainer[Mechanism]
    def __init__(self, connection: _Optional[_Union[Connection, _Mapping]] = ..., mechanism_preferences: _Optional[_Iterable[_Union[Mechanism, _Mapping]]] = ...) -> None: ...

class Mechanism(_message.Message):
    __slots__ = ("cls", "type", "parameters")
    class ParametersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CLS_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    cls: str
    type: str
    parameters: _containers.ScalarMap[str, str]
    def __init__(self, cls: _Optional[str] = ..., type: _Optional[str] = ..., parameters: _Optional[_Mapping[str, str]] = ...) -> None: ...

class PathSegment(_message.Message):
    __slots__ = ("name", "id", "token", "expires", "metrics")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    name: str
    id: str
    token: str
    expires: _timestamp_pb2.Timestamp
    metrics: _containers.ScalarMap[str, str]
    def __init__(self, name: _Optional[str] = ..., id: _Optional[str] = ..., token: _Optional[str] = ..., expires: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., metrics: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Path(_message.Message):
    __slots__ = ("index", "path_segments")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    PATH_SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    index: int
    path_segments: _containers.RepeatedCompositeFieldContainer[PathSegment]
    def __init__(self, index: _Optional[int] = ..., path_segments: _Optional[_Iterable[_Union[PathSegment, _Mapping]]] = ...) -> None: ...

class Connection(_message.Message):
    __slots__ = ("id", "network_service", "mechanism", "context", "labels", "path", "network_service_endpoint_name", "payload", "state")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    NETWORK_SERVICE_FIELD_NUMBER: _ClassVar[int]
    MECHANISM_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    NETWORK_SERVICE_ENDPOINT_NAME_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    id: str
    network_service: str
    mechanism: Mechanism
    context: ConnectionContext
    labels: _containers.ScalarMap[str, str]
    path: Path
    network_service_endpoint_name: str
    payload: str
    state: State
    def __init__(self, id: _Optional[str] = ..., network_service: _Optional[str] = ..., mechanism: _Optional[_Union[Mechanism, _Mapping]] = ..., context: _Optional[_Union[ConnectionContext, _Mapping]] = ..., labels: _Optional[_Mapping[str, str]] = ..., path: _Optional[_Union[Path, _Mapping]] = ..., network_service_endpoint_name: _Optional[str] = ..., payload: _Optional[str] = ..., state: _Optional[_Union[State, str]] = ...) -> None: ...

class ConnectionEvent(_message.Message):
    __slots__ = ("type", "connections")
    class ConnectionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Connection
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Connection, _Mapping]] = ...) -> None: ...
    TYPE_FIELD_NUMBER: _ClassVar[int]
    CONNECTIONS_FIELD_NUMBER: _ClassVar[int]
    type: ConnectionEventType
    connections: _containers.MessageMap[str, Connection]
    def __init__(self, type: _Optional[_Union[ConnectionEventType, str]] = ..., connections: _Optional[_Mapping[str, Connection]] = ...) -> None: ...

class MonitorScopeSelector(_message.Message):
    __slots__ = ("path_segments",)
    PATH_SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    path_segments: _containers.RepeatedCompositeFieldContainer[PathSegment]
    def __init__(self, path_segments: _Optional[_Iterable[_Union[PathSegment, _Mapping]]] = ...) -> None: ...

class IpNeighbor(_message.Message):
    __slots__ = ("ip", "hardware_address")
    IP_FIELD_NUMBER: _ClassVar[int]
    HARDWARE_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    ip: str
    hardware_address: str
    def __init__(self, ip: _Optional[str] = ..., hardware_address: _Optional[str] = ...) -> None: ...

class Route(_message.Message):
    __slots__ = ("prefix", "nextHop")
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    NEXTHOP_FIELD_NUMBER: _ClassVar[int]
    prefix: str
    nextHop: str
    def __init__(self, prefix: _Optional[str] = ..., nextHop: _Optional[str] = ...) -> None: ...

class IPContext(_message.Message):
    __slots__ = ("src_ip_addrs", "dst_ip_addrs", "src_ip_required", "dst_ip_required", "src_routes", "dst_routes", "excluded_prefixes", "ip_neighbors")
    SRC_IP_ADDRS_FIELD_NUMBER: _ClassVar[int]
    DST_IP_ADDRS_FIELD_NUMBER: _ClassVar[int]
    SRC_IP_REQUIRED_FIELD_NUMBER: _ClassVar[int]
    DST_IP_REQUIRED_FIELD_NUMBER: _ClassVar[int]
    SRC_ROUTES_FIELD_NUMBER: _ClassVar[int]
    DST_ROUTES_FIELD_NUMBER: _ClassVar[int]
    EXCLUDED_PREFIXES_FIELD_NUMBER: _ClassVar[int]
    IP_NEIGHBORS_FIELD_NUMBER: _ClassVar[int]
    src_ip_addrs: _containers.RepeatedScalarFieldContainer[str]
    dst_ip_addrs: _containers.RepeatedScalarFieldContainer[str]
    src_ip_required: bool
    dst_ip_required: bool
    src_routes: _containers.RepeatedCompositeFieldContainer[Route]
    dst_routes: _containers.RepeatedCompositeFieldContainer[Route]
    excluded_prefixes: _containers.RepeatedScalarFieldContainer[str]
    ip_neighbors: _containers.RepeatedCompositeFieldContainer[IpNeighbor]
    def __init__(self, src_ip_addrs: _Optional[_Iterable[str]] = ..., dst_ip_addrs: _Optional[_Iterable[str]] = ..., src_ip_required: _Optional[bool] = ..., dst_ip_required: _Optional[bool] = ..., src_routes: _Optional[_Iterable[_Union[Route, _Mapping]]] = ..., dst_routes: _Optional[_Iterable[_Union[Route, _Mapping]]] = ..., excluded_prefixes: _Optional[_Iterable[str]] = ..., ip_neighbors: _Optional[_Iterable[_Union[IpNeighbor, _Mapping]]] = ...) -> None: ...

class DNSConfig(_message.Message):
    __slots__ = ("dns_server_ips", "search_domains")
    DNS_SERVER_IPS_FIELD_NUMBER: _ClassVar[int]
    SEARCH_DOMAINS_FIELD_NUMBER: _ClassVar[int]
    dns_server_ips: _containers.RepeatedScalarFieldContainer[str]
    search_domains: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, dns_server_ips: _Optional[_Iterable[str]] = ..., search_domains: _Optional[_Iterable[str]] = ...) -> None: ...

class DNSContext(_message.Message):
    __slots__ = ("configs",)
    CONFIGS_FIELD_NUMBER: _ClassVar[int]
    configs: _containers.RepeatedCompositeFieldContainer[DNSConfig]
    def __init__(self, configs: _Optional[_Iterable[_Union[DNSConfig, _Mapping]]] = ...) -> None: ...

class EthernetContext(_message.Message):
    __slots__ = ("src_mac", "dst_mac", "vlan_tag")
    SRC_MAC_FIELD_NUMBER: _ClassVar[int]
    DST_MAC_FIELD_NUMBER: _ClassVar[int]
    VLAN_TAG_FIELD_NUMBER: _ClassVar[int]
    src_mac: str
    dst_mac: str
    vlan_tag: int
    def __init__(self, src_mac: _Optional[str] = ..., dst_mac: _Optional[str] = ..., vlan_tag: _Optional[int] = ...) -> None: ...

class ConnectionContext(_message.Message):
    __slots__ = ("ip_context", "dns_context", "ethernet_context", "extra_context", "MTU")
    class ExtraContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    IP_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    DNS_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    ETHERNET_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    EXTRA_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    MTU_FIELD_NUMBER: _ClassVar[int]
    ip_context: IPContext
    dns_context: DNSContext
    ethernet_context: EthernetContext
    extra_context: _containers.ScalarMap[str, str]
    MTU: int
    def __init__(self, ip_context: _Optional[_Union[IPContext, _Mapping]] = ..., dns_context: _Optional[_Union[DNSContext, _Mapping]] = ..., ethernet_context: _Optional[_Union[EthernetContext, _Mapping]] = ..., extra_context: _Optional[_Mapping[str, str]] = ..., MTU: _Optional[int] = ...) -> None: ...
