import Foundation

/// One label of one task with its score: what the server returns per task, and what `TopK`
/// makes from raw logits (the golden files, or a decoder run on the device).
public struct Prediction: Codable, Equatable, Sendable {
    public let label: String
    public let index: Int
    public let score: Double

    public init(label: String, index: Int, score: Double) {
        self.label = label
        self.index = index
        self.score = score
    }

    enum CodingKeys: String, CodingKey {
        case label
        case index
        case score
    }
}

public enum TopK {
    /// Indices of the `k` largest scores, largest first; equal scores keep the lower index
    /// first (a stable order, as the server's `argsort(-p, kind="stable")`).
    public static func indices(of scores: [Float], k: Int) -> [Int] {
        let order = scores.indices.sorted { a, b in
            scores[a] != scores[b] ? scores[a] > scores[b] : a < b
        }
        return Array(order.prefix(max(0, k)))
    }

    /// Numerically stable softmax.
    public static func softmax(_ logits: [Float]) -> [Float] {
        guard let largest = logits.max() else { return [] }
        let exps = logits.map { exp($0 - largest) }
        let total = exps.reduce(0, +)
        return exps.map { $0 / total }
    }

    /// The `k` most probable labels of one task from its logits (softmax scores).
    public static func predictions(logits: [Float], labels: [String], k: Int) -> [Prediction] {
        let probabilities = softmax(logits)
        return indices(of: probabilities, k: k).map {
            Prediction(label: $0 < labels.count ? labels[$0] : String($0), index: $0, score: Double(probabilities[$0]))
        }
    }
}
