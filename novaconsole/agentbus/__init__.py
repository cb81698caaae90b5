"""The agent bus: signed messages between compute agents and consoles over RabbitMQ.

The protocol (keys, envelopes, message bodies) imports neither Textual nor openstacksdk, so
the agent on a hypervisor stays light. The endpoints, :class:`~novaconsole.agentbus.bus.ConsoleBus`
and :class:`~novaconsole.agentbus.bus.AgentBus`, are in :mod:`novaconsole.agentbus.bus` (pika).
"""

from __future__ import annotations

from novaconsole.agentbus.envelope import (
    AGENT_KINDS,
    DEFAULT_WINDOW,
    KINDS,
    PAYLOAD_TYPE,
    REASONS,
    EnvelopeRejected,
    Message,
    ReplayCache,
    open_envelope,
    seal,
)
from novaconsole.agentbus.keys import Keyring, SigningKey, TrustedKey, generate_key_files
from novaconsole.agentbus.messages import (
    BodyError,
    CommandReply,
    CommandRequest,
    Disk,
    Domain,
    DomainEvent,
    Graphics,
    Heartbeat,
    HostFacts,
    Inventory,
    NovaMetadata,
    SerialConsole,
    ServiceStatus,
    parse_body,
)
from novaconsole.agentbus.settings import BusSettings, console_config_path

__all__ = [
    "AGENT_KINDS",
    "DEFAULT_WINDOW",
    "KINDS",
    "PAYLOAD_TYPE",
    "REASONS",
    "BodyError",
    "BusSettings",
    "CommandReply",
    "CommandRequest",
    "Disk",
    "Domain",
    "DomainEvent",
    "EnvelopeRejected",
    "Graphics",
    "Heartbeat",
    "HostFacts",
    "Inventory",
    "Keyring",
    "Message",
    "NovaMetadata",
    "ReplayCache",
    "SerialConsole",
    "ServiceStatus",
    "SigningKey",
    "TrustedKey",
    "console_config_path",
    "generate_key_files",
    "open_envelope",
    "parse_body",
    "seal",
]
