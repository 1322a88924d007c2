"""The iOS demo (ios_demo/): DTCore compiled and tested by a real Swift toolchain, the rest checked
as far as Linux can.

Compiled and run here (the `swift` marker): DTCore is built with Swift 6 (language mode 6,
complete strict-concurrency checking, every warning an error) and its XCTests run against
tests/golden/wire, a real digits export (`int8_export`) and, for RoundTripTests, a real
`dtconvert serve` on loopback; `swift format lint --strict` checks DTCore and the app sources.
The toolchain is the system's `swift` if it is Swift 6, else a Debian 13 root with Debian's
`swiftlang`, built once by ios_demo/scripts/swift_linux.py into `.swift-linux/` (about a minute
and 560 MB the first time). Where neither can be had (not root, not Linux) these tests skip and
the skip says why.

Parse-only here (PARSE_ONLY below): what needs Apple's frameworks. The SwiftUI/UIKit app
(DTDemo/), CoreMLEncoder (Core ML), PixelImage+CoreGraphics (CoreGraphics, ImageIO), Integrity
(CryptoKit) and the Core ML half of CoreMLEncoderTests compile to nothing on Linux, so only
tree-sitter-swift parses them (no ERROR or MISSING node: syntax, not types). The XCTests that need
them skip on Linux naming the framework. The Xcode project is read with `pbxproj`, Info.plist with
plistlib, and the manifest keys the Swift `Codable` types read are looked up in
dtconvert/manifest.schema.json. Compiling those files, running Core ML on the export and building
the app for the iOS simulator happen on macOS in .github/workflows/ios.yml.
"""

from __future__ import annotations

import ast
import json
import os
import plistlib
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from urllib.parse import urlparse
from xml.etree import ElementTree

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
IOS = REPO / "ios_demo"
APP = IOS / "DTDemo"
DTCORE = IOS / "DTCore"
DTCORE_SOURCES = DTCORE / "Sources" / "DTCore"
MANIFEST_SWIFT = DTCORE_SOURCES / "Manifest.swift"
PBXPROJ = IOS / "DTDemo.xcodeproj" / "project.pbxproj"
SCHEME = IOS / "DTDemo.xcodeproj" / "xcshareddata" / "xcschemes" / "DTDemo.xcscheme"
INFO_PLIST = APP / "Info.plist"
WORKFLOW = REPO / ".github" / "workflows" / "ios.yml"
BUNDLE_SCRIPT = IOS / "scripts" / "bundle_export.py"
SCHEMA = REPO / "dtconvert" / "manifest.schema.json"

# Plain HTTP is allowed for the development host only.
DEV_HOSTS = {"localhost", "127.0.0.1"}


def swift_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.swift") if ".build" not in p.parts)


# What Linux cannot compile, and why: only the tree-sitter parse below checks these here (macOS CI
# compiles them). Paths relative to ios_demo/; a DTCore entry must be wholly inside the
# `#if canImport(...)` it names (checked below), so adding a file to DTCore makes it compiled.
PARSE_ONLY = {
    "DTDemo/": "the SwiftUI/UIKit app target: needs the iOS SDK and Xcode",
    "DTCore/Sources/DTCore/CoreMLEncoder.swift": "canImport(CoreML)",
    "DTCore/Sources/DTCore/PixelImage+CoreGraphics.swift": "canImport(CoreGraphics) && canImport(ImageIO)",
    "DTCore/Sources/DTCore/Integrity.swift": "canImport(CryptoKit)",
    "DTCore/Tests/DTCoreTests/CoreMLEncoderTests.swift": "canImport(CoreML), with an #else that skips on Linux",
}


def parse_only_reason(path: Path) -> str | None:
    relative = path.relative_to(IOS).as_posix()
    for prefix, why in PARSE_ONLY.items():
        if relative == prefix or (prefix.endswith("/") and relative.startswith(prefix)):
            return why
    return None


def check_label(path: Path) -> str:
    """How a Swift file is checked here: 'parse-only' or 'compiled' (by the swift tests below)."""
    return f"{'parse-only' if parse_only_reason(path) else 'compiled'}:{path.relative_to(IOS)}"


def app_and_dtcore_sources() -> list[Path]:
    """The code that must take every model detail from the manifest (tests may use fixtures)."""
    return swift_files(APP) + swift_files(DTCORE_SOURCES)


# ---- Swift parsing (tree-sitter-swift) ---------------------------------------------------------


@cache
def _parser():
    import tree_sitter_swift
    from tree_sitter import Language, Parser

    return Parser(Language(tree_sitter_swift.language()))


def parse(source: bytes):
    return _parser().parse(source).root_node


def walk(node):
    yield node
    for child in node.children:
        yield from walk(child)


def syntax_problems(source: bytes) -> list[str]:
    """Every ERROR or MISSING node, as 'line:column: what'."""
    problems = []
    for node in walk(parse(source)):
        if node.type == "ERROR" or node.is_missing:
            line, column = node.start_point
            kind = f"missing {node.type}" if node.is_missing else "syntax error"
            problems.append(f"{line + 1}:{column + 1}: {kind} near {node.text[:40].decode(errors='replace')!r}")
    return problems


@pytest.mark.parametrize("path", swift_files(IOS), ids=check_label)
def test_every_swift_file_parses(path: Path) -> None:
    """A parse check (syntax only). For files marked parse-only in the test id it is the only check
    Linux gives them; the others are also compiled and tested by the swift tests below."""
    assert syntax_problems(path.read_bytes()) == []


def test_parse_check_reports_broken_swift() -> None:
    assert syntax_problems(b"struct A {\n    func f() -> Int { return 1 }\n}\n") == []
    assert syntax_problems(b"struct A {\n    func f( { return 1 }\n}\n")
    assert syntax_problems(b"let x = [1, 2\n")


def test_the_swift_files_are_the_ones_expected() -> None:
    names = {p.name for p in swift_files(IOS)}
    assert {"Package.swift", "Manifest.swift", "Preprocess.swift", "Wire.swift", "DecoderClient.swift", "TopK.swift",
            "CoreMLEncoder.swift", "DTDemoApp.swift", "ContentView.swift"} <= names


# ---- Codable keys against the manifest schema --------------------------------------------------


@dataclass
class SwiftField:
    property: str
    key: str  # the JSON key: the CodingKeys raw value, else the case name
    optional: bool
    element_type: str | None  # the struct a value decodes into (through arrays), if any


@dataclass
class SwiftType:
    name: str
    fields: list[SwiftField] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _type_name(node) -> tuple[bool, str | None]:
    """(optional?, the named element type) of a type annotation: T, T?, [T], [T]?; maps → None."""
    optional = node.type == "optional_type"
    if optional:
        node = node.child_by_field_name("wrapped")
    if node.type == "array_type":
        node = node.child_by_field_name("name")
    if node.type != "user_type":
        return optional, None
    return optional, node.text.decode().split(".")[-1]


def codable_types(source: bytes) -> dict[str, SwiftType]:
    """Every Codable/Decodable struct: its stored properties and the JSON keys its CodingKeys give them."""
    types = {}
    for node in walk(parse(source)):
        if node.type != "class_declaration" or node.child_by_field_name("declaration_kind").type != "struct":
            continue
        inherits = {c.text.decode() for c in node.children if c.type == "inheritance_specifier"}
        if not inherits & {"Codable", "Decodable"}:
            continue
        swift_type = SwiftType(node.child_by_field_name("name").text.decode())
        body = node.child_by_field_name("body")
        stored: dict[str, tuple[bool, str | None]] = {}
        coding_keys: dict[str, str] | None = None
        for member in body.children:
            if member.type == "property_declaration":
                modifiers = member.child_by_field_name("modifiers") or next((c for c in member.children if c.type == "modifiers"), None)
                is_static = modifiers is not None and b"static" in modifiers.text
                annotation = next((c for c in member.children if c.type == "type_annotation"), None)
                if is_static or member.child_by_field_name("computed_value") is not None or annotation is None:
                    continue
                name = member.child_by_field_name("name").text.decode()
                stored[name] = _type_name(annotation.child_by_field_name("name"))
            elif member.type == "class_declaration" and member.child_by_field_name("name").text.decode() == "CodingKeys":
                coding_keys = {}
                for entry in member.child_by_field_name("body").children:
                    if entry.type != "enum_entry":
                        continue
                    case = None
                    for part in entry.children:
                        if part.type == "simple_identifier":
                            case = part.text.decode()
                            coding_keys[case] = case
                        elif entry.field_name_for_child(list(entry.children).index(part)) == "raw_value":
                            coding_keys[case] = part.text.decode().strip('"')
        if coding_keys is None:
            swift_type.problems.append(f"{swift_type.name} has no CodingKeys listing its JSON keys")
            coding_keys = {name: name for name in stored}
        for name in sorted(set(stored) ^ set(coding_keys)):
            swift_type.problems.append(f"{swift_type.name}.{name} is {'not in CodingKeys' if name in stored else 'a CodingKey with no stored property'}")
        for name, (optional, element) in stored.items():
            if name in coding_keys:
                swift_type.fields.append(SwiftField(name, coding_keys[name], optional, element))
        types[swift_type.name] = swift_type
    return types


def _resolve(node: dict, schema: dict) -> dict:
    while "$ref" in node:
        assert node["$ref"].startswith("#/"), node["$ref"]
        target = schema
        for part in node["$ref"][2:].split("/"):
            target = target[part]
        node = target
    return node


def schema_problems(source: bytes, schema: dict) -> list[str]:
    """Keys the Swift decodes that the schema does not have at that place, and non-optional Swift
    properties for keys the schema does not require (a valid manifest could fail to decode)."""
    types = codable_types(source)
    problems = [p for t in types.values() for p in t.problems]
    referenced = {f.element_type for t in types.values() for f in t.fields}
    roots = [name for name in types if name not in referenced]  # decoded from the top of manifest.json

    def check(type_name: str, node: dict, where: str) -> None:
        node = _resolve(node, schema)
        properties, required = node.get("properties", {}), set(node.get("required", []))
        for f in types[type_name].fields:
            path = f"{where}.{f.key}" if where else f.key
            if f.key not in properties:
                problems.append(f"{type_name}.{f.property} reads '{path}', which the schema does not define")
                continue
            if not f.optional and f.key not in required:
                problems.append(f"{type_name}.{f.property} is not optional but the schema does not require '{path}'")
            if f.element_type in types:
                child = _resolve(properties[f.key], schema)
                if child.get("type") == "array":
                    child = child["items"]
                check(f.element_type, child, path)

    for root in roots:
        check(root, schema, "")
    return problems


@cache
def manifest_schema() -> dict:
    return json.loads(SCHEMA.read_text(encoding="utf-8"))


def test_codable_manifest_keys_exist_in_the_schema() -> None:
    source = MANIFEST_SWIFT.read_bytes()
    types = codable_types(source)
    assert {"Manifest", "DeviceInputSpec", "Preprocessing", "WireSpec", "TaskSpec", "ArtifactEntry", "TensorSpec"} <= set(types)
    keys = {f.key for t in types.values() for f in t.fields}
    assert {"schema_version", "device_input", "zero_point", "bytes_per_image", "inputs", "outputs", "mean", "std"} <= keys
    assert schema_problems(source, manifest_schema()) == []


def test_schema_check_catches_a_made_up_key() -> None:
    source = MANIFEST_SWIFT.read_text(encoding="utf-8")
    assert 'case zeroPoint = "zero_point"' in source
    made_up = source.replace('case zeroPoint = "zero_point"', 'case zeroPoint = "zero_pointt"')
    assert schema_problems(made_up.encode(), manifest_schema()) == [
        "WireSpec.zeroPoint reads 'wire.zero_pointt', which the schema does not define"]


def test_schema_check_knows_where_a_key_belongs() -> None:
    # 'scale' exists (under wire and preprocessing) but not in a task entry.
    source = MANIFEST_SWIFT.read_text(encoding="utf-8")
    task = "public struct TaskSpec: Codable, Sendable {\n        public let name: String\n"
    assert task in source
    misplaced = source.replace(task, task + "        public let scale: Double\n").replace(
        "            case labels\n", "            case labels\n            case scale\n", 1)
    assert schema_problems(misplaced.encode(), manifest_schema()) == [
        "TaskSpec.scale reads 'tasks.scale', which the schema does not define"]


def test_schema_check_catches_a_property_missing_from_coding_keys() -> None:
    source = MANIFEST_SWIFT.read_text(encoding="utf-8")
    dropped = source.replace('            case bytesPerImage = "bytes_per_image"\n', "", 1)
    assert schema_problems(dropped.encode(), manifest_schema()) == ["WireSpec.bytesPerImage is not in CodingKeys"]


# ---- no UIKit in DTCore ----------------------------------------------------------------------------


def imported_modules(source: bytes) -> set[str]:
    modules = set()
    for node in walk(parse(source)):
        if node.type == "import_declaration":
            identifier = next(c for c in node.children if c.type == "identifier")
            modules.add(identifier.text.decode().split(".")[0])
    return modules


UI_FRAMEWORKS = {"UIKit", "SwiftUI", "AppKit"}


def test_dtcore_imports_no_ui_framework() -> None:
    for path in swift_files(DTCORE_SOURCES):
        assert not imported_modules(path.read_bytes()) & UI_FRAMEWORKS, path.name
    assert "UIKit" in imported_modules((APP / "CameraPicker.swift").read_bytes())  # the check sees imports


def test_import_check_catches_uikit() -> None:
    assert imported_modules(b"import Foundation\n#if canImport(UIKit)\nimport UIKit\n#endif\n") & UI_FRAMEWORKS == {"UIKit"}


# ---- nothing about the model written in code ------------------------------------------------------

STRING_LITERALS = {"line_string_literal", "multi_line_string_literal", "raw_string_literal"}
ARTIFACT_FILE = re.compile(r"[A-Za-z0-9_-]+\.(mlpackage|mlmodelc|mlmodel|pte|tflite|pt|onnx|npy|safetensors|bin)\b")
URL_SCHEME = re.compile(r"\b[a-z][a-z0-9+.-]*://")
IPV4 = re.compile(r"\b\d{1,3}(\.\d{1,3}){3}\b")
HOST_PORT = re.compile(r"\blocalhost:\d+")


@cache
def model_words() -> frozenset[str]:
    """Names that belong to a model, not to the app: recipe names, their task names and the
    tensor names the exporter gives (dtconvert/targets/__init__.py, read without importing torch)."""
    words = set()
    for recipe in (REPO / "recipes").glob("*.yaml"):
        words.add(recipe.stem)
        words.update(yaml.safe_load(recipe.read_text(encoding="utf-8")).get("tasks", []))
    tree = ast.parse((REPO / "dtconvert" / "targets" / "__init__.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Tuple):
            names = [t.id for t in node.targets[0].elts] if isinstance(node.targets[0], ast.Tuple) else []
            if "INPUT_NAME" in names:
                words.update(v.value for v in node.value.elts)
    assert {"digits", "digit", "odd", "image", "wire"} <= words
    return frozenset(words)


def hardcoded_problems(source: bytes) -> list[str]:
    """String literals naming an artifact file, a URL, an IP address or a model's own names, and
    integer array literals that look like a tensor shape; "manifest.json" is the one allowed name."""
    problems = []
    for node in walk(parse(source)):
        line = node.start_point[0] + 1
        if node.type in STRING_LITERALS:
            text = node.text.decode()
            content = text.strip('#"')
            if content == "manifest.json":
                continue
            found = [what for pattern, what in ((ARTIFACT_FILE, "an artifact file name"), (URL_SCHEME, "a URL"),
                                                (IPV4, "an IP address"), (HOST_PORT, "a host and port")) if pattern.search(content)]
            if content in model_words():
                found.append("a model's own name")
            if found:
                problems.append(f"line {line}: {text} is {' and '.join(found)}")
        elif node.type == "array_literal":
            elements = [c for c in node.children if node.field_name_for_child(list(node.children).index(c)) == "element"]
            if len(elements) >= 3 and all(e.type == "integer_literal" for e in elements):
                problems.append(f"line {line}: {node.text.decode()} looks like a tensor shape")
    return problems


@pytest.mark.parametrize("path", app_and_dtcore_sources(), ids=lambda p: str(p.relative_to(IOS)))
def test_no_model_file_name_shape_url_or_label_in_code(path: Path) -> None:
    assert hardcoded_problems(path.read_bytes()) == []


def test_manifest_json_is_named_once() -> None:
    named = [p.name for p in app_and_dtcore_sources() if b'"manifest.json"' in p.read_bytes()]
    assert named == ["Manifest.swift"]


def test_hardcoded_check_catches_names_shapes_and_urls() -> None:
    snippet = b"""
    let package = bundle.url(forResource: "digits_encoder_coreml_int8.mlpackage", withExtension: nil)
    let server = URL(string: "http://localhost:8080")!
    let lan = "192.168.1.20"
    let shape = [1, 1, 16, 16]
    let feature = "image"
    let labels = ["even", "odd"]
    let fine = "\\(sha).mlmodelc"
    let entry = "manifest.json"
    """
    problems = hardcoded_problems(snippet)
    assert len(problems) == 6, problems
    assert [p.split(": ", 1)[0] for p in problems] == ["line 2", "line 3", "line 4", "line 5", "line 6", "line 7"]


def test_no_placeholder_todos() -> None:
    for path in sorted(IOS.rglob("*")):
        if ".build" in path.parts:  # SwiftPM's generated sources
            continue
        if path.is_file() and path.suffix in {".swift", ".py", ".plist", ".pbxproj", ".md", ".yml", ".xcscheme"}:
            assert not re.search(r"\b(TODO|FIXME|XXX)\b", path.read_text(encoding="utf-8")), path
    assert not re.search(r"\b(TODO|FIXME|XXX)\b", WORKFLOW.read_text(encoding="utf-8"))


# ---- the Xcode project (pbxproj) ----------------------------------------------------------------------


@cache
def project():
    from pbxproj import XcodeProject

    return XcodeProject.load(str(PBXPROJ))


def app_target():
    targets = [t for t in project().objects.get_objects_in_section("PBXNativeTarget") if t.productType == "com.apple.product-type.application"]
    assert [t.name for t in targets] == ["DTDemo"]
    return targets[0]


def configurations(list_id: str) -> dict[str, dict]:
    """Build settings by configuration name, as plain dicts."""
    objects = project().objects
    result = {}
    for config_id in objects[list_id].buildConfigurations:
        settings = objects[config_id].buildSettings
        result[objects[config_id].name] = {key: settings[key] for key in settings.get_keys()}
    return result


def phase(isa: str):
    objects = project().objects
    found = [objects[p] for p in app_target().buildPhases if objects[p].isa == isa]
    assert len(found) == 1, isa
    return found[0]


def phase_files(isa: str) -> list:
    objects = project().objects
    return [objects[b] for b in phase(isa).files]


def group_paths() -> dict[str, Path]:
    """Every object reachable from the main group → its path on disk (groups and files, '<group>'-relative)."""
    objects = project().objects
    root = objects[project().rootObject]
    paths = {}

    def visit(object_id: str, parent: Path) -> None:
        node = objects[object_id]
        relative = node["path"]  # the main group and named groups have none
        path = parent / relative if node.sourceTree == "<group>" and relative else parent
        paths[object_id] = path
        for child in node["children"] or []:
            visit(child, path)

    visit(root.mainGroup, IOS)
    return paths


def test_xcode_project_has_an_ios17_swiftui_app_target() -> None:
    target = app_target()
    root = project().objects[project().rootObject]
    project_configs = configurations(root.buildConfigurationList)
    target_configs = configurations(target.buildConfigurationList)
    assert set(project_configs) == set(target_configs) == {"Debug", "Release"}
    for name in ("Debug", "Release"):
        settings = {**project_configs[name], **target_configs[name]}
        assert settings["IPHONEOS_DEPLOYMENT_TARGET"] == "17.0"
        assert settings["SDKROOT"] == "iphoneos"
        assert settings["INFOPLIST_FILE"] == "DTDemo/Info.plist"
        assert settings["PRODUCT_BUNDLE_IDENTIFIER"]
    sources = {project().objects[b.fileRef].path for b in phase_files("PBXSourcesBuildPhase")}
    assert sources == {p.name for p in swift_files(APP)}  # every app Swift file compiles, nothing else
    assert "@main" in (APP / "DTDemoApp.swift").read_text(encoding="utf-8")


def test_xcode_project_references_the_dtcore_package_and_product() -> None:
    objects = project().objects
    root = objects[project().rootObject]
    [package] = [objects[p] for p in root.packageReferences]
    assert package.isa == "XCLocalSwiftPackageReference"
    assert (IOS / package.relativePath / "Package.swift").is_file()
    [product] = [objects[d] for d in app_target().packageProductDependencies]
    assert product.isa == "XCSwiftPackageProductDependency"
    assert product.productName == "DTCore" and product.package == package.get_id()
    assert [b.productRef for b in phase_files("PBXFrameworksBuildPhase")] == [product.get_id()]
    assert '.library(name: "DTCore"' in (DTCORE / "Package.swift").read_text(encoding="utf-8")


def test_xcode_project_bundles_the_export_as_a_folder_reference() -> None:
    objects = project().objects
    resources = [objects[b.fileRef] for b in phase_files("PBXResourcesBuildPhase")]
    [export] = [r for r in resources if r.lastKnownFileType == "folder"]
    export_path = group_paths()[export.get_id()]
    assert export_path == APP / "Export" and export_path.is_dir()
    plist = plistlib.loads(INFO_PLIST.read_bytes())
    assert plist["DTExportFolder"] == export.path  # the app finds the folder by this key
    # The Run Script phase fills the folder from DT_EXPORT_DIR before Resources copies it.
    order = [objects[p].isa for p in app_target().buildPhases]
    assert order.index("PBXShellScriptBuildPhase") < order.index("PBXResourcesBuildPhase")
    script = phase("PBXShellScriptBuildPhase").shellScript
    assert "scripts/bundle_export.py" in script and "${DT_EXPORT_DIR}" in script and "DTDemo/Export" in script
    for settings in configurations(app_target().buildConfigurationList).values():
        assert settings["DT_EXPORT_DIR"] and settings["ENABLE_USER_SCRIPT_SANDBOXING"] == "NO"
    # Info.plist is processed, never copied as a resource.
    assert "Info.plist" not in {r.path for r in resources}


def test_xcode_project_file_references_exist_on_disk() -> None:
    objects = project().objects
    paths = group_paths()
    for ref in objects.get_objects_in_section("PBXFileReference"):
        if ref.sourceTree == "BUILT_PRODUCTS_DIR":
            continue
        assert ref.get_id() in paths, f"{ref.path} is in no group"
        assert paths[ref.get_id()].exists(), paths[ref.get_id()]


def test_xcode_project_ids_and_form() -> None:
    text = PBXPROJ.read_text(encoding="utf-8")
    defined = re.findall(r"^\t\t([0-9A-F]{24}) (?:/\*.*?\*/ )?= \{", text, flags=re.MULTILINE)
    assert len(defined) == len(set(defined)) == len(project().objects.get_keys())
    referenced = set(re.findall(r"\b[0-9A-F]{24}\b", text))
    assert referenced == set(defined), f"dangling ids: {referenced - set(defined)}"
    assert "objectVersion = 60;" in text
    # pbxproj writes what Xcode writes: the file is in Xcode's own form, so Xcode will not rewrite it.
    assert str(project()).rstrip("\n") == text.rstrip("\n")


def test_shared_scheme_builds_the_app_target() -> None:
    scheme = ElementTree.parse(SCHEME).getroot()
    references = scheme.findall(".//BuildableReference")
    assert references and {r.get("BlueprintIdentifier") for r in references} == {app_target().get_id()}
    assert {r.get("BuildableName") for r in references} == {"DTDemo.app"}
    assert {r.get("ReferencedContainer") for r in references} == {"container:DTDemo.xcodeproj"}
    assert (IOS / "DTDemo.xcodeproj" / "project.xcworkspace" / "contents.xcworkspacedata").is_file()


# ---- Info.plist -------------------------------------------------------------------------------------------


def ats_problems(plist: dict) -> list[str]:
    """App Transport Security may open plain HTTP to the development host only."""
    ats = plist.get("NSAppTransportSecurity", {})
    problems = [f"{key} opens more than the development host" for key in
                ("NSAllowsArbitraryLoads", "NSAllowsArbitraryLoadsInWebContent", "NSAllowsArbitraryLoadsForMedia") if ats.get(key)]
    domains = ats.get("NSExceptionDomains", {})
    if not domains:
        problems.append("no NSExceptionDomains: the development server cannot be reached over HTTP")
    for domain, exception in domains.items():
        if domain not in DEV_HOSTS:
            problems.append(f"exception for {domain}, which is not the development host")
        if exception.get("NSIncludesSubdomains"):
            problems.append(f"exception for {domain} includes subdomains")
        if exception.get("NSExceptionAllowsInsecureHTTPLoads") is not True:
            problems.append(f"exception for {domain} does not allow HTTP")
    return problems


def test_info_plist_allows_http_to_the_development_host_only() -> None:
    plist = plistlib.loads(INFO_PLIST.read_bytes())
    assert ats_problems(plist) == []
    assert plist["NSCameraUsageDescription"] and plist["NSLocalNetworkUsageDescription"]


def test_ats_check_catches_wider_exceptions() -> None:
    wide = {"NSAppTransportSecurity": {"NSAllowsArbitraryLoads": True, "NSExceptionDomains": {
        "localhost": {"NSExceptionAllowsInsecureHTTPLoads": True}, "example.com": {"NSExceptionAllowsInsecureHTTPLoads": True}}}}
    assert ats_problems(wide) == ["NSAllowsArbitraryLoads opens more than the development host",
                                  "exception for example.com, which is not the development host"]


def test_default_server_url_is_a_build_setting_on_the_development_host() -> None:
    plist = plistlib.loads(INFO_PLIST.read_bytes())
    assert plist["DTServerURL"] == "$(DT_SERVER_URL)"
    for settings in configurations(app_target().buildConfigurationList).values():
        url = urlparse(settings["DT_SERVER_URL"])
        assert url.scheme == "http" and url.hostname in plist["NSAppTransportSecurity"]["NSExceptionDomains"]
    for path in (APP / "ContentView.swift", APP / "SettingsView.swift"):
        assert "@AppStorage(SettingsKey.serverURL) private var serverURL = AppConfig.defaultServerURL" in path.read_text(encoding="utf-8")


# ---- the CI workflow ------------------------------------------------------------------------------------


def test_workflow_runs_swift_test_and_builds_the_app() -> None:
    workflow = yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as true
    assert triggers
    [job] = workflow["jobs"].values()
    assert str(job["runs-on"]).startswith("macos")
    steps = job["steps"]
    runs = "\n".join(step.get("run", "") for step in steps)
    assert "pip install -e ." in runs
    assert re.search(r"dtconvert export \S+ --target coreml --out (\S+)", runs)
    [swift_test] = [s for s in steps if "swift test" in s.get("run", "")]
    assert swift_test["working-directory"] == "ios_demo/DTCore"
    assert swift_test["env"]["DT_GOLDEN_DIR"].endswith("tests/golden/wire")
    assert swift_test["env"]["DT_EXPORT_DIR"].endswith("export/digits")
    [build] = [s for s in steps if "xcodebuild build" in s.get("run", "")]
    assert "-scheme DTDemo" in build["run"] and "iOS Simulator" in build["run"] and "DT_EXPORT_DIR=" in build["run"]


# ---- scripts/bundle_export.py (what the Run Script phase runs) --------------------------------------


def _fake_export(root: Path) -> Path:
    """A small export of the real layout: a Core ML package, a TFLite file, golden files."""
    import hashlib

    def put(relative: str, data: bytes) -> str:
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return hashlib.sha256(data).hexdigest()

    contents = {"fileFormatVersion": "1.0.0", "rootModelIdentifier": "m",
                "itemInfoEntries": {"m": {"path": "com.apple.CoreML/model.mlmodel", "name": "model.mlmodel"}}}
    package = {name: put(f"m_encoder_coreml_int8.mlpackage/{name}", data)
               for name, data in {"Manifest.json": json.dumps(contents).encode(), "Data/com.apple.CoreML/model.mlmodel": b"program"}.items()}
    manifest = {
        "schema_version": 1,
        "artifacts": [
            {"path": "m_encoder_coreml_int8.mlpackage", "kind": "directory", "part": "device", "target": "coreml",
             "precision": "int8", "bytes": 9, "sha256": "0" * 64, "files": package},
            {"path": "m_encoder_tflite_int8.tflite", "kind": "file", "part": "device", "target": "tflite",
             "precision": "int8", "bytes": 6, "sha256": put("m_encoder_tflite_int8.tflite", b"tflite")},
        ],
        "golden": {"path": "golden", "count": 1, "files": {"input.npy": put("golden/input.npy", b"\x93NUMPY\x01\x00\x00\x00")}},
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def _bundle(export: Path, dest: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BUNDLE_SCRIPT), str(export), str(dest)], capture_output=True, text=True, timeout=60, check=False)


def test_bundle_script_copies_what_the_manifest_lists(tmp_path: Path) -> None:
    export = _fake_export(tmp_path / "export")
    dest = tmp_path / "Export"
    dest.mkdir()
    (dest / ".gitignore").write_text("*\n")
    (dest / "stale.txt").write_text("from an older export")
    result = _bundle(export, dest)
    assert result.returncode == 0, result.stderr
    copied = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    assert copied == [".gitignore", "golden/input.npy", "m_encoder_coreml_int8.mlpackage/Data/com.apple.CoreML/model.mlmodel",
                      "m_encoder_coreml_int8.mlpackage/Manifest.json", "manifest.json"]
    assert "up to date" in _bundle(export, dest).stdout


def test_bundle_script_refuses_a_corrupt_export(tmp_path: Path) -> None:
    from tests.conftest import assert_one_line_error

    export = _fake_export(tmp_path / "export")
    dest = tmp_path / "Export"
    assert _bundle(export, dest).returncode == 0
    (export / "m_encoder_coreml_int8.mlpackage" / "Data" / "com.apple.CoreML" / "model.mlmodel").write_bytes(b"changed")
    (export / "manifest.json").write_text((export / "manifest.json").read_text().replace('"count": 1', '"count": 2'))
    result = _bundle(export, dest)
    assert_one_line_error(result, 'artifacts[0].files.Data/com.apple.CoreML/model.mlmodel "m_encoder_coreml_int8.mlpackage/'
                                  'Data/com.apple.CoreML/model.mlmodel": sha256')
    assert '"count": 1' in (dest / "manifest.json").read_text()  # the previous bundle is left whole
    shutil.rmtree(export)
    assert_one_line_error(_bundle(export, tmp_path / "Empty"), "has no manifest.json")
    assert_one_line_error(subprocess.run([sys.executable, str(BUNDLE_SCRIPT)], capture_output=True, text=True, timeout=60), "usage")


def _tree(root: Path) -> dict[str, bytes]:
    """Every entry under root (dot-prefixed siblings of a folder included by the caller) → its bytes."""
    return {p.relative_to(root).as_posix(): (p.read_bytes() if p.is_file() else b"") for p in sorted(root.rglob("*"))}


def _coreml(manifest: dict) -> tuple[int, dict]:
    return next((i, a) for i, a in enumerate(manifest["artifacts"]) if a["part"] == "device" and a["target"] == "coreml")


def _doctor(export: Path, outside: Path, case: str) -> str:
    """Break a copy of the int8 export one way (bytes outside it are identical copies, so only the
    path rule can stop them); return what the one-line error must say."""
    import hashlib

    manifest = json.loads((export / "manifest.json").read_text())
    index, package = _coreml(manifest)
    golden = manifest["golden"]["path"]
    real = os.path.realpath
    outside.mkdir()

    def save() -> None:
        (export / "manifest.json").write_text(json.dumps(manifest))

    if case == "traversal":
        shutil.copytree(export / package["path"], outside / "copy.mlpackage")
        package["path"] = f"../{outside.name}/copy.mlpackage"
        save()
        return f'artifacts[{index}].path "../{outside.name}/copy.mlpackage" leaves the export directory (it contains "..")'
    if case == "absolute":
        manifest["golden"]["path"] = str(outside)
        save()
        return f'golden.path "{outside}" leaves the export directory (it is absolute)'
    if case == "symlinked golden file":
        shutil.move(export / golden / "input.npy", outside / "input.npy")
        (export / golden / "input.npy").symlink_to(outside / "input.npy")
        return f'golden.files.input.npy "{golden}/input.npy" leaves the export directory (it resolves to {real(outside)}/input.npy'
    if case == "symlinked package":
        shutil.move(export / package["path"], outside / "package")
        (export / package["path"]).symlink_to(outside / "package")
        return f'artifacts[{index}].path "{package["path"]}" leaves the export directory (it resolves to {real(outside)}/package'
    if case == "symlink inside the package":
        (outside / "secret.txt").write_text("secret")
        (export / package["path"] / "Data" / "extra").symlink_to(outside / "secret.txt")
        return f'artifacts[{index}].path "{package["path"]}" leaves the export directory (it holds a symlink Data/extra to'
    if case == "symlinked manifest":
        shutil.move(export / "manifest.json", outside / "manifest.json")
        (export / "manifest.json").symlink_to(outside / "manifest.json")
        return 'the manifest "manifest.json" leaves the export directory'
    if case == "corrupt npy, sha256 matching":
        data = b"not an array"
        (export / golden / "wire_int8.npy").write_bytes(data)
        manifest["golden"]["files"]["wire_int8.npy"] = hashlib.sha256(data).hexdigest()
        save()
        return f'golden.files.wire_int8.npy "{golden}/wire_int8.npy": not a .npy file (bad magic), though its sha256 matches'
    if case == "corrupt package, sha256 matching":
        data = b"{not json"
        (export / package["path"] / "Manifest.json").write_bytes(data)
        package["files"]["Manifest.json"] = hashlib.sha256(data).hexdigest()
        save()
        return f'artifacts[{index}].files.Manifest.json "{package["path"]}/Manifest.json": not valid JSON'
    if case == "sha256 mismatch":
        (export / golden / "input.npy").write_bytes((export / golden / "input.npy").read_bytes()[:-1] + b"\0")
        manifest["note"] = "a newer export"  # else the bundle already matches this manifest: 'up to date', nothing read
        save()
        return f'golden.files.input.npy "{golden}/input.npy": sha256'
    if case == "manifest not an object":
        (export / "manifest.json").write_text("[]")
        return "manifest.json: the document must be an object"
    raise AssertionError(case)


BAD_EXPORTS = ["traversal", "absolute", "symlinked golden file", "symlinked package", "symlink inside the package",
               "symlinked manifest", "corrupt npy, sha256 matching", "corrupt package, sha256 matching", "sha256 mismatch",
               "manifest not an object"]


@pytest.mark.parametrize("case", BAD_EXPORTS)
def test_bundle_script_refuses_a_hostile_or_corrupt_export_and_copies_nothing(int8_export, tmp_path: Path, case: str) -> None:
    """The real int8 export, broken one way: exit 2, one line naming the manifest field and the
    path, the previous bundle left byte for byte, no staging folder left behind, nothing from
    outside the export copied."""
    from tests.conftest import assert_one_line_error

    export = shutil.copytree(int8_export, tmp_path / "export", symlinks=True, ignore=shutil.ignore_patterns("triton", "*.pt"))
    apps = tmp_path / "app"
    dest = apps / "Export"
    dest.mkdir(parents=True)
    (dest / ".gitignore").write_text("*\n")
    assert _bundle(export, dest).returncode == 0
    before = _tree(apps)
    sentence = _doctor(export, tmp_path / "outside", case)
    assert_one_line_error(_bundle(export, dest), sentence)
    assert _tree(apps) == before  # the old bundle whole, no staging or retired folder


def test_twin_bundle_script_takes_a_symlink_that_stays_inside(int8_export, tmp_path: Path) -> None:
    """A golden file that is a symlink to another file inside the export is bundled, as a plain file."""
    export = shutil.copytree(int8_export, tmp_path / "export", symlinks=True, ignore=shutil.ignore_patterns("triton", "*.pt"))
    golden = json.loads((export / "manifest.json").read_text())["golden"]["path"]
    (export / "kept").mkdir()
    shutil.move(export / golden / "input.npy", export / "kept" / "input.npy")
    (export / golden / "input.npy").symlink_to(export / "kept" / "input.npy")
    dest = tmp_path / "Export"
    result = _bundle(export, dest)
    assert result.returncode == 0, result.stderr
    copied = dest / golden / "input.npy"
    assert copied.is_file() and not copied.is_symlink()
    assert copied.read_bytes() == (export / "kept" / "input.npy").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Export", "export"]  # no staging left


# ---- the README --------------------------------------------------------------------------------------


def test_readme_walks_from_export_to_a_running_app() -> None:
    readme = (IOS / "README.md").read_text(encoding="utf-8")
    steps = re.findall(r"^(\d+)\. ", readme, flags=re.MULTILINE)
    assert len(steps) >= 5 and steps[:5] == ["1", "2", "3", "4", "5"]
    for needed in ("dtconvert train", "dtconvert export", "dtconvert serve export/digits --host 0.0.0.0 --port 8080",
                   "```mermaid", "swift test", "xcodebuild", "parse check"):
        assert needed in readme, needed


# ---- parse-only vs compiled: the table above is what the sources say ---------------------------------

APPLE_ONLY = {"CoreML", "CoreGraphics", "ImageIO", "CryptoKit", "UIKit", "SwiftUI"}


def whole_file_guard(source: str) -> str | None:
    """The condition of an `#if canImport(...)` that holds a whole file (comments aside), with
    ', with an #else that ...' noted when the file has a branch for the other platforms; else None."""
    lines = [line.strip() for line in source.splitlines()]
    code = [line for line in lines if line and not line.startswith("//")]
    if not code or not re.fullmatch(r"#if canImport\(\w+\)( && canImport\(\w+\))*", code[0]) or code[-1] != "#endif":
        return None
    depth, has_else = 0, False
    for index, line in enumerate(code):
        if line.startswith("#if"):
            depth += 1
        elif line.startswith("#endif"):
            depth -= 1
            if depth == 0 and index != len(code) - 1:
                return None  # the first #if closes before the end: not the whole file
        elif line.startswith(("#else", "#elseif")) and depth == 1:
            has_else = True
    condition = code[0].removeprefix("#if ")
    return f"{condition}, with an #else that skips on Linux" if has_else else condition


def test_parse_only_table_matches_the_guards_in_the_sources() -> None:
    """Every DTCore file wholly behind an Apple-only `#if canImport` is listed as parse-only with
    that guard, and nothing else in DTCore is: the rest is compiled and tested by `swift`."""
    found = {}
    for path in swift_files(DTCORE):
        guard = whole_file_guard(path.read_text(encoding="utf-8"))
        if guard is not None:
            assert set(re.findall(r"canImport\((\w+)\)", guard)) <= APPLE_ONLY, (path, guard)
            found[path.relative_to(IOS).as_posix()] = guard
    assert found == {k: v for k, v in PARSE_ONLY.items() if k.startswith("DTCore/")}
    assert all(parse_only_reason(p) for p in swift_files(APP)) and len(swift_files(APP)) >= 5


def test_twin_guard_reader_sees_partial_and_missing_guards() -> None:
    assert whole_file_guard("// x\n#if canImport(CoreML)\nimport CoreML\n#endif\n") == "canImport(CoreML)"
    assert whole_file_guard("import Foundation\n#if canImport(CoreML)\nimport CoreML\n#endif\n") is None
    assert whole_file_guard("#if canImport(CoreML)\nimport CoreML\n#endif\nlet x = 1\n") is None
    with_else = "#if canImport(A)\n#if B\n#endif\n#else\nlet y = 2\n#endif\n"
    assert whole_file_guard(with_else) == "canImport(A), with an #else that skips on Linux"


# ---- compiled and run: DTCore with a real Swift toolchain ---------------------------------------------

SWIFT_LINUX = IOS / "scripts" / "swift_linux.py"
SWIFT_FORMAT_CONFIG = IOS / ".swift-format"
GOLDEN_WIRE = REPO / "tests" / "golden" / "wire"
# Every warning is an error, so "builds with no warnings" is the build itself (a cached build
# prints no warnings again, but a warning never left a build behind).
BUILD_FLAGS = ("-Xswiftc", "-warnings-as-errors")
# XCTests Linux cannot run, and what each one's skip must name.
LINUX_SKIPS = {
    "CoreMLEncoderTests.testCoreMLEncoderNeedsCoreML": "needs Core ML",
    "ManifestTests.testIntegrityOfARealExportAndAFlippedByte": "needs CryptoKit",
}
# How many XCTests run on Linux: a suite that silently lost tests fails here.
XCTESTS_WITHOUT_ROUND_TRIP = 45
ROUND_TRIP_XCTESTS = 6
# Linux (corelibs) and macOS spell a test differently: 'Class.testName' / '-[Module.Class testName]'.
_NAME = r"(?:-\[)?(?:\w+\.)?(\w+)[ .](\w+)\]?"
TEST_CASE = re.compile(rf"^Test Case '{_NAME}' (passed|failed|skipped) \(", re.MULTILINE)
SKIP_REASON = re.compile(rf": {_NAME} : Test skipped - (.*)$", re.MULTILINE)
FAILURE = re.compile(rf"^(\S+?): error: {_NAME} : (.*)$", re.MULTILINE)


def swift(*command: str, bind: tuple[Path, ...] = (), env: dict[str, str | Path] | None = None,
          cwd: Path | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    """Run `swift ...` through ios_demo/scripts/swift_linux.py (in DTCore unless `cwd`)."""
    args = [sys.executable, str(SWIFT_LINUX)]
    for path in bind:
        args += ["--bind", str(path)]
    for name, value in (env or {}).items():
        args += ["--env", f"{name}={value}"]
    if cwd is not None:
        args += ["--cwd", str(cwd)]
    return subprocess.run([*args, "--", "swift", *command], capture_output=True, text=True, timeout=timeout)


@dataclass
class XCTestRun:
    code: int
    outcomes: dict[str, str]  # "Class.testName" → passed | failed | skipped
    skip_reasons: dict[str, str]
    failures: list[str]  # "Class.testName: message"
    output: str

    def named(self, outcome: str) -> set[str]:
        return {name for name, got in self.outcomes.items() if got == outcome}


def xctest_run(done: subprocess.CompletedProcess) -> XCTestRun:
    output = done.stdout + done.stderr
    outcomes = {f"{cls}.{name}": outcome for cls, name, outcome in TEST_CASE.findall(output)}
    reasons = {f"{cls}.{name}": reason.strip() for cls, name, reason in SKIP_REASON.findall(output)}
    failures = [f"{cls}.{name}: {message.strip()}" for _, cls, name, message in FAILURE.findall(output)]
    return XCTestRun(done.returncode, outcomes, reasons, failures, output)


def run_xctests(*arguments: str, bind: tuple[Path, ...] = (), **env: str | Path) -> XCTestRun:
    done = swift("test", "--skip-build", "--disable-swift-testing", *BUILD_FLAGS, *arguments,
                 bind=bind, env={"DT_GOLDEN_DIR": GOLDEN_WIRE, **env})
    run = xctest_run(done)
    assert run.outcomes, f"no 'Test Case ... passed|failed|skipped' lines in swift test's output:\n{run.output[-4000:]}"
    return run


@pytest.fixture(scope="session")
def swift_toolchain() -> str:
    """The system's Swift 6, or the cached Debian 13 root (built here the first time: ~1 min)."""
    done = subprocess.run([sys.executable, str(SWIFT_LINUX)], capture_output=True, text=True, timeout=1800)
    if done.returncode == 3:
        pytest.skip(f"no Swift toolchain, so DTCore is not compiled here: {done.stderr.strip()}")
    assert done.returncode == 0, f"{SWIFT_LINUX.name} could not provide Swift (exit {done.returncode}):\n{done.stderr}"
    return done.stdout.strip()


@pytest.fixture(scope="session")
def dtcore_build(swift_toolchain) -> str:
    """DTCore and its tests built once per session (SwiftPM's .build keeps it between sessions)."""
    done = swift("build", "--build-tests", *BUILD_FLAGS)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"swift build of DTCore failed ({swift_toolchain}):\n{output[-6000:]}"
    return output


def test_swift_script_refuses_bad_arguments() -> None:
    from tests.conftest import assert_one_line_error

    for arguments, needle in ((["--", "ls"], "must start with swift"),
                              (["--env", "NOEQUALS", "--", "swift", "build"], "NAME=VALUE"),
                              (["--bind", "relative/path"], "absolute path"),
                              (["--cwd", "/", "--", "swift", "build"], "--cwd must be inside")):
        done = subprocess.run([sys.executable, str(SWIFT_LINUX), *arguments], capture_output=True, text=True, timeout=60)
        assert_one_line_error(done, needle)


def _swift_linux_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("swift_linux", SWIFT_LINUX)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_swift_script_says_why_when_no_toolchain_can_be_had(monkeypatch, capsys) -> None:
    """Not root and no Swift 6 on PATH: exit 3 and one 'unavailable:' line (the tests skip with it)."""
    module = _swift_linux_module()
    monkeypatch.setattr(module, "system_swift", lambda: None)
    monkeypatch.setattr(module.os, "geteuid", lambda: 1000)
    assert module.main([]) == 3
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("unavailable: ") and "needs root" in lines[0], lines


def test_swift_script_reads_the_debian_mirror_apt_uses(tmp_path: Path) -> None:
    module = _swift_linux_module()
    deb822 = tmp_path / "debian.sources"
    deb822.write_text("Types: deb\n# http://snapshot.debian.org/archive/debian/x\nURIs: http://mirror.example/debian\nSuites: bookworm\n")
    one_line = tmp_path / "sources.list"
    one_line.write_text("deb [signed-by=/k.gpg] http://ftp.example/debian/ bookworm main\n")
    other = tmp_path / "nodesource.sources"
    other.write_text("URIs: https://deb.nodesource.com/node_20.x\n")
    disabled = tmp_path / "old.list.disabled"
    disabled.write_text("deb http://old.example/debian bookworm main\n")
    assert module.debian_mirror([disabled, other, deb822, one_line]) == "http://mirror.example/debian"
    assert module.debian_mirror([one_line]) == "http://ftp.example/debian"
    assert module.debian_mirror([other, disabled]) == module.DEFAULT_MIRROR


@pytest.mark.swift
def test_dtcore_builds_in_swift6_mode_with_no_warnings(dtcore_build) -> None:
    package = (DTCORE / "Package.swift").read_text(encoding="utf-8")
    assert package.startswith("// swift-tools-version: 6.0\n")
    assert "swiftLanguageModes: [.v6]" in package and "unsafeFlags" not in package
    assert "warning:" not in dtcore_build, dtcore_build


@pytest.mark.swift
def test_twin_swift6_mode_rejects_a_data_race_and_a_warning(swift_toolchain, tmp_path: Path) -> None:
    """DTCore's own Package.swift with one file holding a mutable global (a data race under Swift
    6) and an unused value (a warning): the same build command refuses both."""
    package = tmp_path / "DTCore"
    (package / "Sources" / "DTCore").mkdir(parents=True)
    (package / "Tests" / "DTCoreTests").mkdir(parents=True)
    shutil.copy(DTCORE / "Package.swift", package / "Package.swift")
    (package / "Sources" / "DTCore" / "Shared.swift").write_text(
        "public var requestsServed = 0\n\npublic func serve() {\n    let unused = requestsServed\n}\n")
    (package / "Tests" / "DTCoreTests" / "Empty.swift").write_text("import DTCore\n")
    done = swift("build", *BUILD_FLAGS, bind=(tmp_path,), cwd=package)
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert "var 'requestsServed' is not concurrency-safe" in output, output
    assert "initialization of immutable value 'unused' was never used" in output, output


@pytest.mark.swift
def test_dtcore_xctests_pass_against_the_digits_export(dtcore_build, int8_export) -> None:
    """Every DTCore XCTest Linux can run, with the real export: golden wire vectors, quantization,
    manifest, npy, preprocessing, top-k and the stubbed HTTP client. Only the Core ML and CryptoKit
    tests skip, each naming what it needs."""
    run = run_xctests("--skip", "RoundTripTests", bind=(int8_export,), DT_EXPORT_DIR=int8_export)
    assert run.code == 0 and not run.named("failed"), "\n".join(run.failures) or run.output[-4000:]
    assert run.named("skipped") == set(LINUX_SKIPS), run.skip_reasons
    for name, needed in LINUX_SKIPS.items():
        assert needed in run.skip_reasons[name], run.skip_reasons[name]
    assert len(run.outcomes) == XCTESTS_WITHOUT_ROUND_TRIP, sorted(run.outcomes)
    assert not any(name.startswith("RoundTripTests.") for name in run.outcomes)


@pytest.mark.swift
def test_twin_xctests_catch_a_flipped_golden_byte(dtcore_build, tmp_path: Path) -> None:
    golden = shutil.copytree(GOLDEN_WIRE, tmp_path / "wire")
    data = bytearray((golden / "digits_b1.bin").read_bytes())
    data[-1] ^= 0x01
    (golden / "digits_b1.bin").write_bytes(bytes(data))
    run = run_xctests("--filter", "WireGoldenTests", bind=(tmp_path,), DT_GOLDEN_DIR=golden)
    assert run.code != 0
    assert run.named("failed") == {"WireGoldenTests.testEncodeReproducesEveryGoldenMessageByteForByte",
                                   "WireGoldenTests.testDecodeReadsEveryGoldenMessageBack"}, run.output[-4000:]
    assert any("digits_b1: bytes differ from digits_b1.bin" in failure for failure in run.failures), run.failures


@pytest.fixture(scope="module")
def digits_server(int8_export):
    """The real `dtconvert serve` of the digits export on a free loopback port."""
    from tests.serving import running_server

    with running_server(int8_export) as server:
        yield server


@pytest.mark.swift
@pytest.mark.serve
def test_swift_round_trip_against_dtconvert_serve(dtcore_build, int8_export, digits_server) -> None:
    """DTCore quantizes the golden encoder outputs, DecoderClient posts them to the real server on
    loopback, and every image gets the golden decoder's top-1 for every task; scores are the
    softmax of the golden logits; a task mask, another model's id (422), a truncated message (400)
    and another content type (415) get what docs/serving.md says."""
    run = run_xctests("--filter", "RoundTripTests", bind=(int8_export,), DT_EXPORT_DIR=int8_export, DT_SERVER_URL=digits_server.url)
    assert run.code == 0 and not run.named("failed"), "\n".join(run.failures) + f"\n--- server log ---\n{digits_server.log()}"
    assert run.named("passed") == set(run.outcomes) and len(run.outcomes) == ROUND_TRIP_XCTESTS, run.outcomes


@pytest.mark.swift
@pytest.mark.serve
def test_twin_swift_round_trip_notices_another_images_logits(dtcore_build, int8_export, digits_server, tmp_path: Path) -> None:
    """The same server and messages, but the export's golden digit logits moved one image along:
    the top-1 check fails (and the softmax check with it, unless two neighbours agree), so its
    passing above means the answers are right."""
    import numpy as np

    manifest = json.loads((int8_export / "manifest.json").read_text())
    export = tmp_path / "export"
    shutil.copytree(int8_export / manifest["golden"]["path"], export / manifest["golden"]["path"])
    shutil.copy(int8_export / "manifest.json", export / "manifest.json")
    logits = export / manifest["golden"]["path"] / "logits_digit.npy"
    rows = np.load(logits)
    assert len(set(rows.argmax(axis=1))) > 1, "the golden digits need more than one class for this twin"
    np.save(logits, np.roll(rows, 1, axis=0))
    run = run_xctests("--filter", "RoundTripTests", bind=(export,), DT_EXPORT_DIR=export, DT_SERVER_URL=digits_server.url)
    assert run.code != 0
    top1 = "RoundTripTests.testGoldenWireBatchDecodesToTheGoldenTopOneOfEveryTask"
    softmax = "RoundTripTests.testServerScoresAreTheSoftmaxOfTheGoldenLogits"
    assert top1 in run.named("failed") and run.named("failed") <= {top1, softmax}, run.output[-4000:]
    assert any("digit: top-1" in failure for failure in run.failures), run.failures


def swift_format_lint(*paths: Path, bind: tuple[Path, ...] = ()) -> subprocess.CompletedProcess:
    return swift("format", "lint", "--strict", "--configuration", str(SWIFT_FORMAT_CONFIG), "--recursive",
                 *map(str, paths), bind=bind, timeout=300)


@pytest.mark.swift
def test_swift_format_lint_strict_is_clean(swift_toolchain) -> None:
    config = json.loads(SWIFT_FORMAT_CONFIG.read_text(encoding="utf-8"))
    assert config["indentation"] == {"spaces": 4} and config["lineLength"] == 140
    done = swift_format_lint(DTCORE / "Package.swift", DTCORE / "Sources", DTCORE / "Tests", APP)
    assert done.returncode == 0 and done.stdout + done.stderr == "", done.stdout + done.stderr


@pytest.mark.swift
def test_twin_swift_format_lint_catches_bad_formatting(swift_toolchain, tmp_path: Path) -> None:
    source = (DTCORE_SOURCES / "TopK.swift").read_text(encoding="utf-8")
    badly = source.replace("    public static func softmax", "  public static func softmax", 1)  # 2-space indent
    badly = badly.replace("public enum TopK {", "public enum TopK {   ", 1)  # trailing spaces
    assert badly.count("\n") == source.count("\n") and badly != source
    (tmp_path / "TopK.swift").write_text(badly)
    done = swift_format_lint(tmp_path / "TopK.swift", bind=(tmp_path,))
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert "[Indentation] indent by 2 spaces" in output and "[TrailingWhitespace]" in output, output
