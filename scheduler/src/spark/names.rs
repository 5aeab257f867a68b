//! The names Spark gives columns it computes: `sum(b)`, `(a + 1)`, `CAST(a AS INT)`,
//! `count(1)`, so that `row["sum(b)"]` finds the value as it does on Spark.

use ember_proto::spark::expression::ExprType;
use ember_proto::spark::expression::literal::LiteralType;
use ember_proto::spark::{Expression, expression::Literal};

/// Spark's name for an expression's result column.
pub fn name(e: &Expression) -> String {
    match &e.expr_type {
        Some(ExprType::Literal(l)) => literal(l),
        Some(ExprType::UnresolvedAttribute(a)) => last_part(&a.unparsed_identifier),
        Some(ExprType::UnresolvedFunction(f)) => {
            function(&f.function_name, &f.arguments, f.is_distinct)
        }
        Some(ExprType::CallFunction(f)) => function(&f.function_name, &f.arguments, false),
        Some(ExprType::ExpressionString(s)) => s.expression.clone(),
        Some(ExprType::UnresolvedStar(s)) => match &s.unparsed_target {
            Some(t) => t.clone(),
            None => "*".into(),
        },
        Some(ExprType::Alias(a)) => a.name.join("."),
        Some(ExprType::Cast(c)) => {
            let inner = c.expr.as_deref().map(name).unwrap_or_default();
            let to = match &c.cast_to_type {
                Some(ember_proto::spark::expression::cast::CastToType::TypeStr(s)) => {
                    super::types::parse_type(s)
                        .map(|t| super::types::type_name(&t))
                        .unwrap_or_else(|_| s.to_uppercase())
                }
                Some(ember_proto::spark::expression::cast::CastToType::Type(t)) => {
                    super::types::arrow_type(t)
                        .map(|t| super::types::type_name(&t))
                        .unwrap_or_default()
                }
                None => String::new(),
            };
            format!("CAST({inner} AS {to})")
        }
        Some(ExprType::UnresolvedExtractValue(v)) => {
            let child = v.child.as_deref().map(name).unwrap_or_default();
            let key = v.extraction.as_deref().map(name).unwrap_or_default();
            format!("{child}[{key}]")
        }
        Some(ExprType::Window(w)) => {
            let f = w.window_function.as_deref().map(name).unwrap_or_default();
            format!("{f} OVER (...)")
        }
        Some(ExprType::SortOrder(s)) => s.child.as_deref().map(name).unwrap_or_default(),
        _ => "expr".into(),
    }
}

fn last_part(identifier: &str) -> String {
    super::expr::identifier_parts(identifier)
        .pop()
        .unwrap_or_else(|| identifier.to_string())
}

fn literal(l: &Literal) -> String {
    match &l.literal_type {
        Some(LiteralType::Null(_)) | None => "NULL".into(),
        Some(LiteralType::Boolean(b)) => b.to_string(),
        Some(LiteralType::Byte(v) | LiteralType::Short(v) | LiteralType::Integer(v)) => {
            v.to_string()
        }
        Some(LiteralType::Long(v)) => v.to_string(),
        Some(LiteralType::Float(v)) => v.to_string(),
        Some(LiteralType::Double(v)) => {
            if v.fract() == 0.0 && v.is_finite() {
                format!("{v:.1}")
            } else {
                v.to_string()
            }
        }
        Some(LiteralType::String(s)) => s.clone(),
        Some(LiteralType::Decimal(d)) => d.value.clone(),
        Some(LiteralType::Date(days)) => format!("DATE '{days}'"),
        Some(other) => format!("{other:?}"),
    }
}

/// Operators Spark prints between their operands.
fn infix(function: &str) -> Option<&'static str> {
    Some(match function {
        "+" => "+",
        "-" => "-",
        "*" => "*",
        "/" => "/",
        "%" => "%",
        "==" => "=",
        "!=" => "!=",
        "<=>" => "<=>",
        "<" => "<",
        "<=" => "<=",
        ">" => ">",
        ">=" => ">=",
        "and" => "AND",
        "or" => "OR",
        "&" => "&",
        "|" => "|",
        "^" => "^",
        _ => return None,
    })
}

fn function(function: &str, args: &[Expression], distinct: bool) -> String {
    let names: Vec<String> = args.iter().map(name).collect();
    let lower = function.to_ascii_lowercase();
    if let (Some(op), [l, r]) = (infix(&lower), names.as_slice()) {
        return format!("({l} {op} {r})");
    }
    match (lower.as_str(), names.as_slice()) {
        ("not", [a]) => return format!("(NOT {a})"),
        ("negative", [a]) => return format!("(- {a})"),
        ("isnull", [a]) => return format!("({a} IS NULL)"),
        ("isnotnull", [a]) => return format!("({a} IS NOT NULL)"),
        ("like", [a, b]) => return format!("{a} LIKE {b}"),
        ("ilike", [a, b]) => return format!("ilike({a}, {b})"),
        ("rlike", [a, b]) => return format!("RLIKE({a}, {b})"),
        ("in", [a, rest @ ..]) => return format!("({a} IN ({}))", rest.join(", ")),
        ("when", _) => {
            let mut out = "CASE".to_string();
            for pair in names.chunks(2) {
                match pair {
                    [c, v] => out.push_str(&format!(" WHEN {c} THEN {v}")),
                    [e] => out.push_str(&format!(" ELSE {e}")),
                    _ => {}
                }
            }
            return out + " END";
        }
        _ => {}
    }
    let star = |a: &Expression| matches!(a.expr_type, Some(ExprType::UnresolvedStar(_)));
    if lower == "count" && args.len() == 1 && star(&args[0]) {
        return "count(1)".into();
    }
    let distinct = if distinct { "DISTINCT " } else { "" };
    format!("{function}({distinct}{})", names.join(", "))
}
