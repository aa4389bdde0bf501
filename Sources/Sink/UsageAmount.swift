import Foundation

/// A usage value, exact: a 64-bit integer while it is one (counts, sums of integers), added and
/// compared without `Decimal`'s cost, and a `Decimal` otherwise (fractions, or an integer sum
/// that outgrew 64 bits).
public enum UsageAmount: Sendable, Comparable, ExpressibleByIntegerLiteral, CustomStringConvertible {
    case integer(Int64)
    case decimal(Decimal)

    public init(integerLiteral value: Int64) {
        self = .integer(value)
    }

    /// The amount as a `Decimal`.
    public var decimal: Decimal {
        switch self {
        case .integer(let value): Decimal(value)
        case .decimal(let value): value
        }
    }

    public var description: String {
        switch self {
        case .integer(let value): value.description
        case .decimal(let value): value.description
        }
    }

    public static func + (lhs: UsageAmount, rhs: UsageAmount) -> UsageAmount {
        if case .integer(let left) = lhs, case .integer(let right) = rhs {
            let (sum, overflow) = left.addingReportingOverflow(right)
            if !overflow { return .integer(sum) }
        }
        return .decimal(lhs.decimal + rhs.decimal)
    }

    public static func += (lhs: inout UsageAmount, rhs: UsageAmount) {
        lhs = lhs + rhs
    }

    public static func < (lhs: UsageAmount, rhs: UsageAmount) -> Bool {
        if case .integer(let left) = lhs, case .integer(let right) = rhs { return left < right }
        return lhs.decimal < rhs.decimal
    }

    /// Equal numbers are equal however they are held: `.integer(2) == .decimal(2)`.
    public static func == (lhs: UsageAmount, rhs: UsageAmount) -> Bool {
        if case .integer(let left) = lhs, case .integer(let right) = rhs { return left == right }
        return lhs.decimal == rhs.decimal
    }
}
