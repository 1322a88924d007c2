package dev.dtconvert.demo.core

/**
 * A small, strict JSON reader (RFC 8259) for the manifest and the server's answers.
 *
 * Core runs on a plain JVM as well as on Android, so it cannot use `org.json` (an Android
 * class) and kotlinx.serialization needs a compiler plugin; this reader is all core needs.
 * Strict means: one value and nothing after it, no comments, no trailing commas, no NaN or
 * Infinity, no duplicate keys, no control characters inside strings, a nesting limit.
 */
sealed interface JsonValue

data class JsonObject(val members: Map<String, JsonValue>) : JsonValue

data class JsonArray(val items: List<JsonValue>) : JsonValue

data class JsonString(val value: String) : JsonValue

/** A number keeps its source text, so an integer too large for a Double is still exact. */
data class JsonNumber(val text: String) : JsonValue {
    val double: Double get() = text.toDouble()

    /** The value as a Long, or null when it is not an integer (3.0 and 3e0 are integers). */
    val longOrNull: Long?
        get() {
            text.toLongOrNull()?.let { return it }
            val d = double
            return if (d == Math.rint(d) && Math.abs(d) < 9.007199254740992E15) d.toLong() else null
        }
}

data class JsonBool(val value: Boolean) : JsonValue

object JsonNull : JsonValue

class JsonException(message: String) : IllegalArgumentException(message)

object JsonReader {
    private const val MAX_DEPTH = 256

    /** Parse one JSON document; throw [JsonException] naming the offset of the first problem. */
    fun parse(text: String): JsonValue {
        val parser = Parser(text)
        parser.skipWhitespace()
        val value = parser.value(0)
        parser.skipWhitespace()
        if (!parser.atEnd()) parser.fail("unexpected '${text[parser.pos]}' after the JSON value")
        return value
    }

    private class Parser(val text: String) {
        var pos = 0

        fun atEnd() = pos >= text.length

        fun fail(problem: String): Nothing = throw JsonException("JSON offset $pos: $problem")

        fun skipWhitespace() {
            while (pos < text.length && text[pos] in " \t\n\r") pos++
        }

        fun value(depth: Int): JsonValue {
            if (depth > MAX_DEPTH) fail("nesting deeper than $MAX_DEPTH levels")
            if (atEnd()) fail("unexpected end of input, expected a value")
            return when (val c = text[pos]) {
                '{' -> obj(depth)
                '[' -> array(depth)
                '"' -> JsonString(string())
                't' -> literal("true", JsonBool(true))
                'f' -> literal("false", JsonBool(false))
                'n' -> literal("null", JsonNull)
                else -> if (c == '-' || c in '0'..'9') number() else fail("unexpected '$c', expected a value")
            }
        }

        private fun literal(word: String, value: JsonValue): JsonValue {
            if (!text.startsWith(word, pos)) fail("invalid literal, expected '$word'")
            pos += word.length
            return value
        }

        private fun obj(depth: Int): JsonObject {
            pos++ // '{'
            val members = LinkedHashMap<String, JsonValue>()
            skipWhitespace()
            if (!atEnd() && text[pos] == '}') {
                pos++
                return JsonObject(members)
            }
            while (true) {
                skipWhitespace()
                if (atEnd() || text[pos] != '"') fail("expected a string key")
                val keyAt = pos
                val key = string()
                if (key in members) {
                    pos = keyAt
                    fail("duplicate key \"$key\"")
                }
                skipWhitespace()
                if (atEnd() || text[pos] != ':') fail("expected ':' after key \"$key\"")
                pos++
                skipWhitespace()
                members[key] = value(depth + 1)
                skipWhitespace()
                if (atEnd()) fail("unexpected end of input inside an object")
                when (text[pos]) {
                    ',' -> pos++
                    '}' -> {
                        pos++
                        return JsonObject(members)
                    }
                    else -> fail("expected ',' or '}' in an object")
                }
            }
        }

        private fun array(depth: Int): JsonArray {
            pos++ // '['
            val items = ArrayList<JsonValue>()
            skipWhitespace()
            if (!atEnd() && text[pos] == ']') {
                pos++
                return JsonArray(items)
            }
            while (true) {
                skipWhitespace()
                items.add(value(depth + 1))
                skipWhitespace()
                if (atEnd()) fail("unexpected end of input inside an array")
                when (text[pos]) {
                    ',' -> pos++
                    ']' -> {
                        pos++
                        return JsonArray(items)
                    }
                    else -> fail("expected ',' or ']' in an array")
                }
            }
        }

        private fun string(): String {
            pos++ // opening quote
            val out = StringBuilder()
            while (true) {
                if (atEnd()) fail("unterminated string")
                val c = text[pos]
                when {
                    c == '"' -> {
                        pos++
                        return out.toString()
                    }
                    c == '\\' -> {
                        pos++
                        if (atEnd()) fail("unterminated escape")
                        when (val e = text[pos]) {
                            '"', '\\', '/' -> out.append(e)
                            'b' -> out.append('\b')
                            'f' -> out.append('\u000C')
                            'n' -> out.append('\n')
                            'r' -> out.append('\r')
                            't' -> out.append('\t')
                            'u' -> {
                                if (pos + 4 >= text.length) fail("truncated \\u escape")
                                val hex = text.substring(pos + 1, pos + 5)
                                if (!hex.all { it in '0'..'9' || it in 'a'..'f' || it in 'A'..'F' }) fail("invalid \\u escape \"$hex\"")
                                out.append(hex.toInt(16).toChar())
                                pos += 4
                            }
                            else -> fail("invalid escape '\\$e'")
                        }
                        pos++
                    }
                    c < ' ' -> fail("control character U+%04X inside a string".format(c.code))
                    else -> {
                        out.append(c)
                        pos++
                    }
                }
            }
        }

        private fun number(): JsonNumber {
            val start = pos
            if (text[pos] == '-') pos++
            if (atEnd() || text[pos] !in '0'..'9') fail("a number needs digits")
            if (text[pos] == '0') {
                pos++
                if (!atEnd() && text[pos] in '0'..'9') fail("a number must not have leading zeros")
            } else {
                while (!atEnd() && text[pos] in '0'..'9') pos++
            }
            if (!atEnd() && text[pos] == '.') {
                pos++
                if (atEnd() || text[pos] !in '0'..'9') fail("a fraction needs digits")
                while (!atEnd() && text[pos] in '0'..'9') pos++
            }
            if (!atEnd() && (text[pos] == 'e' || text[pos] == 'E')) {
                pos++
                if (!atEnd() && (text[pos] == '+' || text[pos] == '-')) pos++
                if (atEnd() || text[pos] !in '0'..'9') fail("an exponent needs digits")
                while (!atEnd() && text[pos] in '0'..'9') pos++
            }
            val literal = text.substring(start, pos)
            if (literal.toDouble().isInfinite()) {
                pos = start
                fail("number $literal is out of range")
            }
            return JsonNumber(literal)
        }
    }
}

/**
 * A JSON value with the location it came from, so that a reader's error names the field:
 * `manifest.json: wire.scale must be a number`.
 *
 * [where] is the concrete location (`artifacts[2].path`); [schemaPath] is the same location
 * with array indices left out (`artifacts[].path`), the form [ManifestKeys] uses, so that a
 * key can be looked up with [at] exactly as it is spelled in the schema check.
 */
class JsonField(val value: JsonValue, val where: String, val schemaPath: String, private val source: String) {
    fun fail(problem: String): Nothing = throw JsonException("$source: ${where.ifEmpty { "the document" }} $problem")

    private fun join(base: String, key: String) = if (base.isEmpty()) key else "$base.$key"

    fun optional(key: String): JsonField? {
        val obj = value as? JsonObject ?: fail("must be an object")
        val v = obj.members[key] ?: return null
        return JsonField(v, join(where, key), join(schemaPath, key), source)
    }

    operator fun get(key: String): JsonField =
        optional(key) ?: throw JsonException("$source: ${join(where, key)} is missing")

    /** The field at a dotted [key] below this one, spelled from the root (`wire.scale`,
     *  or `tasks[].name` from an element of `tasks`). */
    fun at(key: String): JsonField = relative(key).fold(this) { field, part -> field[part] }

    /** Like [at], or null when the last part of the key is absent or null. */
    fun optionalAt(key: String): JsonField? {
        val parts = relative(key)
        val parent = parts.dropLast(1).fold(this) { field, part -> field[part] }
        return parent.optional(parts.last())?.takeUnless { it.isNull }
    }

    private fun relative(key: String): List<String> {
        val prefix = if (schemaPath.isEmpty()) "" else "$schemaPath."
        require(key.startsWith(prefix) && key.length > prefix.length) { "key $key is not below $schemaPath" }
        val rest = key.substring(prefix.length)
        require("[]" !in rest) { "key $key crosses an array below $schemaPath; iterate with items()" }
        return rest.split('.')
    }

    val isNull: Boolean get() = value == JsonNull

    fun items(): List<JsonField> {
        val arr = value as? JsonArray ?: fail("must be an array")
        return arr.items.mapIndexed { i, v -> JsonField(v, "$where[$i]", "$schemaPath[]", source) }
    }

    fun entries(): List<Pair<String, JsonField>> {
        val obj = value as? JsonObject ?: fail("must be an object")
        return obj.members.map { (k, v) -> k to JsonField(v, join(where, k), join(schemaPath, "*"), source) }
    }

    fun string(): String = (value as? JsonString)?.value ?: fail("must be a string")

    fun double(): Double = (value as? JsonNumber)?.double ?: fail("must be a number")

    fun long(): Long {
        val number = value as? JsonNumber ?: fail("must be an integer")
        return number.longOrNull ?: fail("must be an integer, got ${number.text}")
    }

    fun int(): Int {
        val v = long()
        if (v < Int.MIN_VALUE || v > Int.MAX_VALUE) fail("is out of range: $v")
        return v.toInt()
    }

    fun bool(): Boolean = (value as? JsonBool)?.value ?: fail("must be true or false")

    fun ints(): IntArray = items().map { it.int() }.toIntArray()

    fun doubles(): DoubleArray = items().map { it.double() }.toDoubleArray()

    fun strings(): List<String> = items().map { it.string() }

    companion object {
        /** Parse [text] (named [source] in errors: a file name or a URL) into a root field. */
        fun parse(text: String, source: String): JsonField =
            try {
                JsonField(JsonReader.parse(text), "", "", source)
            } catch (e: JsonException) {
                throw JsonException("$source: not valid JSON (${e.message})")
            }
    }
}
