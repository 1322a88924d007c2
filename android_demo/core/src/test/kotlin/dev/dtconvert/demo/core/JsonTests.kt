package dev.dtconvert.demo.core

val jsonTests = listOf(
    test("json parses nested values in order") {
        val value = JsonReader.parse(""" { "b": [1, -2.5e3, true, false, null], "a": {"s": "x\"y\\z\/"} } """)
        val obj = value as? JsonObject ?: fail("not an object: $value")
        assertEquals(listOf("b", "a"), obj.members.keys.toList(), "key order")
        val items = (obj.members["b"] as JsonArray).items
        assertEquals(JsonNumber("1"), items[0], "int")
        assertEquals(-2500.0, (items[1] as JsonNumber).double, "exponent")
        assertEquals(listOf<JsonValue>(JsonBool(true), JsonBool(false), JsonNull), items.drop(2), "literals")
        assertEquals(JsonString("x\"y\\z/"), (obj.members["a"] as JsonObject).members["s"], "escapes")
    },
    test("json decodes unicode escapes and surrogate pairs") {
        assertEquals(JsonString("é€😀\n\t"), JsonReader.parse("\"\\u00e9\\u20AC\\ud83d\\ude00\\n\\t\""), "string")
        assertEquals(JsonString("ü"), JsonReader.parse("\"ü\""), "raw UTF-16 text")
    },
    test("json numbers keep their text and know when they are integers") {
        assertEquals(3L, JsonNumber("3").longOrNull, "3")
        assertEquals(3L, JsonNumber("3.0").longOrNull, "3.0")
        assertEquals(100L, JsonNumber("1e2").longOrNull, "1e2")
        assertEquals(null, JsonNumber("0.5").longOrNull, "0.5")
        assertEquals(9007199254740993L, JsonNumber("9007199254740993").longOrNull, "2^53 + 1 stays exact")
        assertEquals(0.028272707015275955, JsonNumber("0.028272707015275955").double, "float64 digits")
    },
    test("json rejects what RFC 8259 does not allow") {
        val bad = mapOf(
            "[1, 2,]" to "expected a value",
            "{\"a\": 1,}" to "expected a string key",
            "[NaN]" to "unexpected 'N'",
            "[Infinity]" to "unexpected 'I'",
            "[01]" to "leading zeros",
            "[1.]" to "fraction needs digits",
            "[1e]" to "exponent needs digits",
            "[-]" to "needs digits",
            "[1e999]" to "out of range",
            "{\"a\": 1, \"a\": 2}" to "duplicate key \"a\"",
            "\"tab\there\"" to "control character U+0009",
            "\"open" to "unterminated string",
            "\"\\x\"" to "invalid escape",
            "\"\\u12g4\"" to "invalid \\u escape",
            "{} {}" to "after the JSON value",
            "[1 2]" to "expected ',' or ']'",
            "{\"a\" 1}" to "expected ':'",
            "tru" to "expected 'true'",
            "// comment\n{}" to "unexpected '/'",
            "'single'" to "unexpected '''",
            "" to "unexpected end of input",
        )
        for ((text, fragment) in bad) assertThrows<JsonException>(fragment) { JsonReader.parse(text) }
    },
    test("json limits nesting depth") {
        JsonReader.parse("[".repeat(200) + "]".repeat(200))
        assertThrows<JsonException>("nesting deeper than 256") { JsonReader.parse("[".repeat(300) + "]".repeat(300)) }
    },
    test("json fields name the path of a missing or mistyped key") {
        val root = JsonField.parse("""{"wire": {"scale": "x"}, "tasks": [{"name": 1}]}""", "manifest.json")
        assertThrows<JsonException>("manifest.json: wire.scale must be a number") { root.at("wire.scale").double() }
        assertThrows<JsonException>("manifest.json: wire.zero_point is missing") { root.at("wire.zero_point") }
        val task = root.at("tasks").items().single()
        assertEquals("tasks[]", task.schemaPath, "schema path of an array element")
        assertThrows<JsonException>("manifest.json: tasks[0].name must be a string") { task.at("tasks[].name").string() }
        assertThrows<IllegalArgumentException>("is not below tasks[]") { task.at("wire.scale") }
        assertThrows<JsonException>("manifest.json: not valid JSON") { JsonField.parse("{", "manifest.json") }
    },
)
