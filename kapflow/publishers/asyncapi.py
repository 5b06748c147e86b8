"""The AsyncAPI 3 document of kapflow's Kafka topics, generated from the pydantic contracts.

Payload schemas come from the same models that validate input (events/) and describe
output (events/outputs.py), so the document cannot drift from the code.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from events.outputs import OUTPUT_MODELS, OutgoingCloudEvent
from events.registry import EVENT_MODELS
from kapflow import __version__
from kapflow.service.outbox import CLOUDEVENT_TYPES

REF = "#/components/schemas/{model}"


def _message_name(type_name: str) -> str:
    head, _, tail = type_name.partition(".")
    return head + "".join(part.capitalize() for part in tail.split("_"))


def asyncapi_document(
    events_topic: str = "kapflow.events",
    topics: dict[str, str] | None = None,
    partitions: int = 8,
) -> dict[str, Any]:
    topics = topics or {
        "state-changes": "kapflow.state-changes",
        "tasks": "kapflow.tasks",
        "rejected": "kapflow.rejected",
        "deviations": "kapflow.deviations",
    }
    models: list[tuple[type[BaseModel], JsonSchemaMode]] = [
        (model, "validation") for model in EVENT_MODELS.values()
    ]
    models += [(model, "serialization") for model in OUTPUT_MODELS.values()]
    models.append((OutgoingCloudEvent, "serialization"))
    refs, definitions = models_json_schema(models, ref_template=REF)
    schemas: dict[str, Any] = definitions["$defs"]

    key = {"type": "string", "description": "the client id (CloudEvents `subject`)"}
    kafka_message = {"kafka": {"key": key, "bindingVersion": "0.5.0"}}
    messages: dict[str, Any] = {}
    for type_name, model in EVENT_MODELS.items():
        messages[_message_name(type_name)] = {
            "name": type_name,
            "title": type_name,
            "summary": (model.__doc__ or type_name).strip().splitlines()[0],
            "contentType": "application/cloudevents+json",
            "payload": refs[(model, "validation")],
            "bindings": kafka_message,
        }
    outgoing: dict[str, str] = {}
    for topic, output in OUTPUT_MODELS.items():
        name = _message_name(CLOUDEVENT_TYPES[topic])
        outgoing[topic] = name
        messages[name] = {
            "name": CLOUDEVENT_TYPES[topic],
            "title": CLOUDEVENT_TYPES[topic],
            "summary": (output.__doc__ or "").strip().splitlines()[0],
            "contentType": "application/cloudevents+json",
            "payload": {
                "allOf": [
                    refs[(OutgoingCloudEvent, "serialization")],
                    {
                        "type": "object",
                        "properties": {
                            "type": {"const": CLOUDEVENT_TYPES[topic]},
                            "data": refs[(output, "serialization")],
                        },
                    },
                ]
            },
            "bindings": kafka_message,
        }

    def channel(address: str, names: list[str], description: str) -> dict[str, Any]:
        return {
            "address": address,
            "description": description,
            "messages": {n: {"$ref": f"#/components/messages/{n}"} for n in names},
            "bindings": {
                "kafka": {
                    "partitions": partitions,
                    "topicConfiguration": {"cleanup.policy": ["delete"]},
                    "bindingVersion": "0.5.0",
                }
            },
        }

    event_names = [_message_name(t) for t in EVENT_MODELS]
    channels = {
        "events": channel(
            events_topic,
            event_names,
            "Input. CloudEvents 1.0, structured mode (or binary mode with ce_ headers); "
            "key = client id so one client's events share a partition and keep their order.",
        ),
        "stateChanges": channel(
            topics["state-changes"], [outgoing["state-changes"]], "Client state changes."
        ),
        "tasks": channel(topics["tasks"], [outgoing["tasks"]], "Task opened/updated/closed."),
        "rejected": channel(
            topics["rejected"], [outgoing["rejected"]], "Dead letters: original + reasons."
        ),
        "deviations": channel(
            topics["deviations"],
            [outgoing["deviations"]],
            "Protocol deviations for the clinical lead: facts of care recorded although they "
            "broke a rule, and late facts that resolved or revealed such a break.",
        ),
    }

    def op(action: str, channel_name: str, names: list[str], summary: str) -> dict[str, Any]:
        return {
            "action": action,
            "channel": {"$ref": f"#/channels/{channel_name}"},
            "summary": summary,
            "messages": [{"$ref": f"#/channels/{channel_name}/messages/{n}"} for n in names],
        }

    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "kapflow",
            "version": __version__,
            "description": (
                "Event-driven care workflow for the Ketamine-Assisted Psychotherapy programme. "
                "Publishers send CloudEvents to the events topic; kapflow publishes state "
                "changes, task changes, dead letters and protocol deviations from a "
                "transactional outbox, at least once, each with a stable CloudEvents id to "
                "de-duplicate on, in per-client order (key = client id)."
            ),
        },
        "defaultContentType": "application/cloudevents+json",
        "servers": {
            "production": {
                "host": "kafka.internal:9093",
                "protocol": "kafka-secure",
                "description": "Apache Kafka, SASL/SCRAM over TLS",
                "security": [{"$ref": "#/components/securitySchemes/scram"}],
            },
            "development": {
                "host": "127.0.0.1:9092",
                "protocol": "kafka",
                "description": "`kapflow broker` (in-memory, development only)",
            },
        },
        "channels": channels,
        "operations": {
            "receiveEvents": op("receive", "events", event_names, "kapflow consumes care events."),
            "sendStateChanges": op(
                "send",
                "stateChanges",
                [outgoing["state-changes"]],
                "kapflow publishes client state changes.",
            ),
            "sendTaskChanges": op(
                "send", "tasks", [outgoing["tasks"]], "kapflow publishes task changes."
            ),
            "sendDeadLetters": op(
                "send", "rejected", [outgoing["rejected"]], "kapflow publishes rejected inputs."
            ),
            "sendProtocolDeviations": op(
                "send",
                "deviations",
                [outgoing["deviations"]],
                "kapflow publishes protocol deviations and their resolution.",
            ),
        },
        "components": {
            "schemas": schemas,
            "messages": messages,
            "securitySchemes": {
                "scram": {"type": "scramSha512", "description": "SASL/SCRAM-SHA-512 over TLS"}
            },
        },
    }
