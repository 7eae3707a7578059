#!/usr/bin/env python3
"""Writes fields.txt: the protobuf field numbers and types of Kubernetes' API messages.

kubectl's typed clients send request bodies as Kubernetes protobuf; the API server decodes
them with this table (field number -> name and type) and the OpenAPI schema (name -> JSON
property). The numbers come from Kubernetes' generated.proto files, as carried by the
k8s-pb crate (kube-rs, Apache-2.0), fetched from crates.io:

    curl -sL https://static.crates.io/crates/k8s-pb/k8s-pb-0.9.0.crate | tar xz -C /tmp
    crates/apiserver/proto/generate.py /tmp/k8s-pb-0.9.0/src > crates/apiserver/proto/fields.txt
"""
import os
import re
import sys

PREFIX = {
    "api": "io.k8s.api",
    "apimachinery": "io.k8s.apimachinery",
    "apiextensions_apiserver": "io.k8s.apiextensions-apiserver",
    "kube_aggregator": "io.k8s.kube-aggregator",
}

ATTR = re.compile(r'#\[prost\((.*)\)\]')
FIELD = re.compile(r'pub (?:r#)?(\w+):\s*(.*)')


def full_name(module, name):
    head = PREFIX.get(module[0])
    if head is None:
        return None
    return ".".join([head] + module[1:] + [name])


def resolve(module, ty):
    """The message a Rust type names: Option<Box<super::x::Y>> -> full name."""
    ty = ty.strip().rstrip(",")
    for wrap in ("::core::option::Option<", "::prost::alloc::vec::Vec<", "::prost::alloc::boxed::Box<", "Option<", "Vec<", "Box<"):
        while ty.startswith(wrap):
            ty = ty[len(wrap):-1].strip()
    if "BTreeMap<" in ty:
        ty = ty[ty.index("BTreeMap<") + len("BTreeMap<"):-1]
        ty = ty.split(",", 1)[1].strip()
        return resolve(module, ty)
    parts = [p for p in ty.split("::") if p]
    mod = list(module)
    while parts and parts[0] == "super":
        mod.pop()
        parts.pop(0)
    if len(parts) == 1:
        return full_name(mod, parts[0])
    return full_name(mod + parts[:-1], parts[-1])


def main(root):
    out = []
    for dirpath, _, files in sorted(os.walk(root)):
        if "mod.rs" not in files:
            continue
        module = os.path.relpath(dirpath, root).split(os.sep)
        if module == ["."] or module[0] not in PREFIX:
            continue
        lines = open(os.path.join(dirpath, "mod.rs")).read().splitlines()
        i = 0
        current = None
        while i < len(lines):
            line = lines[i].strip()
            m = re.match(r'pub struct (\w+) \{', line)
            if m:
                current = full_name(module, m.group(1))
                out.append(current)
            elif line == "}":
                current = None
            a = ATTR.match(line)
            if a and current:
                attr = a.group(1)
                j = i + 1
                while not lines[j].strip().startswith("pub "):
                    j += 1
                decl = lines[j].strip()
                while not decl.endswith(",") or decl.count("<") != decl.count(">"):
                    j += 1
                    decl += " " + lines[j].strip()
                f = FIELD.match(decl)
                name, ty = f.group(1), f.group(2)
                tag = re.search(r'tag = "(\d+)"', attr).group(1)
                kind = attr.split(",")[0].split("=")[0].strip()
                if kind == "btree_map":
                    k, v = re.search(r'btree_map = "(\w+), (\w+)"', attr).groups()
                    target = resolve(module, ty) if v == "message" else "-"
                    out.append(f" {tag} {name} map:{v} {target}")
                else:
                    label = "rep" if "repeated" in attr else "opt"
                    target = resolve(module, ty) if kind == "message" else "-"
                    out.append(f" {tag} {name} {kind}:{label} {target}")
                i = j
            i += 1
    print("\n".join(out))


if __name__ == "__main__":
    main(sys.argv[1])
