#!/usr/bin/env python3
"""Writes Spark Connect's .proto files into proto/proto/spark/connect/.

The protocol's definitions (Apache-2.0, from Apache Spark) ship inside the published
`pyspark-client` package as the serialized descriptors of its `*_pb2.py` modules; this script
prints those descriptors back as proto3 source, so that Ember compiles the exact protocol the
client it is tested with speaks. Comments are not in the descriptors, so the files carry none.

    python3 -m pip install 'pyspark-client==4.2.0'
    python3 scripts/spark-connect-protos.py
"""

import importlib
import os
import sys
import warnings

warnings.simplefilter("ignore")
from google.protobuf import descriptor_pb2  # noqa: E402

MODULES = [
    "base", "relations", "expressions", "commands", "common", "types", "catalog",
    "ml", "ml_common", "pipelines",
]
F = descriptor_pb2.FieldDescriptorProto
SCALARS = {
    F.TYPE_DOUBLE: "double", F.TYPE_FLOAT: "float", F.TYPE_INT64: "int64",
    F.TYPE_UINT64: "uint64", F.TYPE_INT32: "int32", F.TYPE_FIXED64: "fixed64",
    F.TYPE_FIXED32: "fixed32", F.TYPE_BOOL: "bool", F.TYPE_STRING: "string",
    F.TYPE_BYTES: "bytes", F.TYPE_UINT32: "uint32", F.TYPE_SFIXED32: "sfixed32",
    F.TYPE_SFIXED64: "sfixed64", F.TYPE_SINT32: "sint32", F.TYPE_SINT64: "sint64",
}


def type_name(field):
    if field.type in (F.TYPE_MESSAGE, F.TYPE_ENUM):
        return field.type_name  # fully qualified, with its leading dot
    return SCALARS[field.type]


def field_options(field):
    options = []
    if field.options.deprecated:
        options.append("deprecated = true")
    return f" [{', '.join(options)}]" if options else ""


def map_entries(message):
    return {f".{n.name}": n for n in message.nested_type if n.options.map_entry}


def print_field(out, field, indent, entries, scope):
    label = ""
    if field.label == F.LABEL_REPEATED:
        entry = entries.get(field.type_name.removeprefix(scope)) if field.type_name else None
        if entry is not None:
            key, value = entry.field
            out.append(f"{indent}map<{type_name(key)}, {type_name(value)}> {field.name} = "
                       f"{field.number}{field_options(field)};")
            return
        label = "repeated "
    elif field.proto3_optional:
        label = "optional "
    out.append(f"{indent}{label}{type_name(field)} {field.name} = {field.number}"
               f"{field_options(field)};")


def print_enum(out, enum, indent):
    out.append(f"{indent}enum {enum.name} {{")
    if enum.options.allow_alias:
        out.append(f"{indent}  option allow_alias = true;")
    for value in enum.value:
        deprecated = " [deprecated = true]" if value.options.deprecated else ""
        out.append(f"{indent}  {value.name} = {value.number}{deprecated};")
    out.append(f"{indent}}}")


def print_message(out, message, indent, scope):
    scope = f"{scope}.{message.name}"
    out.append(f"{indent}message {message.name} {{")
    inner = indent + "  "
    entries = map_entries(message)
    for enum in message.enum_type:
        print_enum(out, enum, inner)
    for nested in message.nested_type:
        if not nested.options.map_entry:
            print_message(out, nested, inner, scope)
    # Synthetic oneofs (proto3 `optional`) are printed as the optional field itself.
    real_oneofs = {
        f.oneof_index for f in message.field if f.HasField("oneof_index") and not f.proto3_optional
    }
    printed = set()
    for field in message.field:
        if field.HasField("oneof_index") and field.oneof_index in real_oneofs:
            index = field.oneof_index
            if index in printed:
                continue
            printed.add(index)
            out.append(f"{inner}oneof {message.oneof_decl[index].name} {{")
            for member in message.field:
                if member.HasField("oneof_index") and member.oneof_index == index:
                    print_field(out, member, inner + "  ", entries, scope)
            out.append(f"{inner}}}")
        else:
            print_field(out, field, inner, entries, scope)
    for reserved in message.reserved_range:
        end = reserved.end - 1
        span = f"{reserved.start}" if end == reserved.start else f"{reserved.start} to {end}"
        out.append(f"{inner}reserved {span};")
    for name in message.reserved_name:
        out.append(f'{inner}reserved "{name}";')
    out.append(f"{indent}}}")


def print_file(proto):
    out = [
        "// Apache Spark Connect protocol (Apache License 2.0), printed from the descriptors in",
        "// pyspark-client's generated modules by scripts/spark-connect-protos.py. Do not edit.",
        "",
        'syntax = "proto3";',
        "",
        f"package {proto.package};",
        "",
    ]
    for dependency in proto.dependency:
        out.append(f'import "{dependency}";')
    if proto.dependency:
        out.append("")
    if proto.options.java_multiple_files:
        out.append("option java_multiple_files = true;")
    if proto.options.java_package:
        out.append(f'option java_package = "{proto.options.java_package}";')
    if proto.options.go_package:
        out.append(f'option go_package = "{proto.options.go_package}";')
    out.append("")
    scope = f".{proto.package}"
    for enum in proto.enum_type:
        print_enum(out, enum, "")
        out.append("")
    for message in proto.message_type:
        print_message(out, message, "", scope)
        out.append("")
    for service in proto.service:
        out.append(f"service {service.name} {{")
        for method in service.method:
            client = "stream " if method.client_streaming else ""
            server = "stream " if method.server_streaming else ""
            out.append(f"  rpc {method.name}({client}{method.input_type}) returns "
                       f"({server}{method.output_type}) {{}}")
        out.append("}")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def main():
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "proto", "proto")
    for name in MODULES:
        module = importlib.import_module(f"pyspark.sql.connect.proto.{name}_pb2")
        proto = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(proto)
        path = os.path.join(root, proto.name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(print_file(proto))
        print(f"wrote {os.path.relpath(path)}", file=sys.stderr)


if __name__ == "__main__":
    main()
