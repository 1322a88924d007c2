package dev.dtconvert.demo.core

/** One ranked class of one task: what the server returns per entry and what the app shows. */
data class Prediction(val label: String, val index: Int, val score: Float)

object Ranking {
    /** Index of the largest value (the first one on ties, as `numpy.argmax`). */
    fun argmax(values: FloatArray): Int {
        require(values.isNotEmpty()) { "argmax of no values" }
        var best = 0
        for (i in 1 until values.size) if (values[i] > values[best]) best = i
        return best
    }

    /** Softmax probabilities, computed in double and shifted by the maximum so no exp overflows. */
    fun softmax(logits: FloatArray): FloatArray {
        require(logits.isNotEmpty()) { "softmax of no values" }
        val max = logits.maxOf { it.toDouble() }
        val exps = DoubleArray(logits.size) { Math.exp(logits[it] - max) }
        val sum = exps.sum()
        return FloatArray(logits.size) { (exps[it] / sum).toFloat() }
    }

    /** The [k] highest scores, highest first; equal scores keep the lower index first. */
    fun topK(scores: FloatArray, labels: List<String>, k: Int): List<Prediction> {
        require(labels.size == scores.size) { "${scores.size} scores but ${labels.size} labels" }
        require(k in 1..scores.size) { "k must be in 1..${scores.size}, got $k" }
        return scores.indices
            .sortedWith(compareByDescending<Int> { scores[it] }.thenBy { it })
            .take(k)
            .map { Prediction(labels[it], it, scores[it]) }
    }
}
