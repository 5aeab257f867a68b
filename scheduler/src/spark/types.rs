//! Spark's types and values: Spark Connect's `DataType` and literals to Arrow and DataFusion,
//! Arrow schemas back to Spark's, Spark's type names (`"decimal(10,2)"`, `"a INT, b STRING"`),
//! and the Arrow types a PySpark client can read.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Fields, IntervalUnit, Schema, TimeUnit};
use datafusion::common::ScalarValue;
use ember_core::{EmberError, Result};
use ember_proto::spark::data_type::{self as dt, Kind};
use ember_proto::spark::expression::literal::LiteralType;
use ember_proto::spark::{self as sc, expression::Literal};

use super::unsupported;

/// A Spark Connect data type as the Arrow type DataFusion computes with.
pub fn arrow_type(spark: &sc::DataType) -> Result<DataType> {
    let Some(kind) = &spark.kind else {
        return Err(EmberError::User("a data type without its kind".into()));
    };
    Ok(match kind {
        Kind::Null(_) => DataType::Null,
        Kind::Binary(_) => DataType::Binary,
        Kind::Boolean(_) => DataType::Boolean,
        Kind::Byte(_) => DataType::Int8,
        Kind::Short(_) => DataType::Int16,
        Kind::Integer(_) => DataType::Int32,
        Kind::Long(_) => DataType::Int64,
        Kind::Float(_) => DataType::Float32,
        Kind::Double(_) => DataType::Float64,
        Kind::Decimal(d) => {
            DataType::Decimal128(d.precision.unwrap_or(10) as u8, d.scale.unwrap_or(0) as i8)
        }
        Kind::String(_) | Kind::Char(_) | Kind::VarChar(_) => DataType::Utf8,
        Kind::Date(_) => DataType::Date32,
        Kind::Timestamp(_) => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        Kind::TimestampNtz(_) => DataType::Timestamp(TimeUnit::Microsecond, None),
        Kind::CalendarInterval(_) => DataType::Interval(IntervalUnit::MonthDayNano),
        Kind::YearMonthInterval(_) => DataType::Interval(IntervalUnit::YearMonth),
        Kind::DayTimeInterval(_) => DataType::Duration(TimeUnit::Microsecond),
        Kind::Array(a) => {
            let element = a
                .element_type
                .as_deref()
                .ok_or_else(|| EmberError::User("an array type without its element".into()))?;
            DataType::List(Arc::new(Field::new(
                "element",
                arrow_type(element)?,
                a.contains_null,
            )))
        }
        Kind::Struct(s) => DataType::Struct(struct_fields(s)?),
        Kind::Map(m) => {
            let (Some(key), Some(value)) = (m.key_type.as_deref(), m.value_type.as_deref()) else {
                return Err(EmberError::User(
                    "a map type without its key or value".into(),
                ));
            };
            let entries = Field::new(
                "entries",
                DataType::Struct(Fields::from(vec![
                    Field::new("key", arrow_type(key)?, false),
                    Field::new("value", arrow_type(value)?, m.value_contains_null),
                ])),
                false,
            );
            DataType::Map(Arc::new(entries), false)
        }
        Kind::Unparsed(u) => parse_type(&u.data_type_string)?,
        other => return Err(unsupported("data type", &format!("{other:?}"))),
    })
}

fn struct_fields(s: &dt::Struct) -> Result<Fields> {
    s.fields
        .iter()
        .map(|f| {
            let data_type = f
                .data_type
                .as_ref()
                .ok_or_else(|| EmberError::User(format!("field {} has no type", f.name)))?;
            Ok(Field::new(&f.name, arrow_type(data_type)?, f.nullable))
        })
        .collect()
}

/// An Arrow schema as Spark's struct type, for `df.schema` and the results' schema.
pub fn spark_schema(schema: &Schema) -> sc::DataType {
    sc::DataType {
        kind: Some(Kind::Struct(dt::Struct {
            fields: schema.fields().iter().map(|f| spark_field(f)).collect(),
            type_variation_reference: 0,
        })),
    }
}

fn spark_field(field: &Field) -> dt::StructField {
    dt::StructField {
        name: field.name().clone(),
        data_type: Some(spark_type(field.data_type())),
        nullable: field.is_nullable(),
        metadata: None,
    }
}

/// The Spark type a client sees for an Arrow type (after [`client_type`]).
pub fn spark_type(data_type: &DataType) -> sc::DataType {
    let kind = match client_type(data_type) {
        DataType::Null => Kind::Null(dt::Null::default()),
        DataType::Boolean => Kind::Boolean(dt::Boolean::default()),
        DataType::Int8 => Kind::Byte(dt::Byte::default()),
        DataType::Int16 => Kind::Short(dt::Short::default()),
        DataType::Int32 => Kind::Integer(dt::Integer::default()),
        DataType::Int64 => Kind::Long(dt::Long::default()),
        DataType::Float32 => Kind::Float(dt::Float::default()),
        DataType::Float64 => Kind::Double(dt::Double::default()),
        DataType::Decimal128(p, s) | DataType::Decimal256(p, s) => Kind::Decimal(dt::Decimal {
            precision: Some(p as i32),
            scale: Some(s as i32),
            type_variation_reference: 0,
        }),
        DataType::Binary => Kind::Binary(dt::Binary::default()),
        DataType::Date32 => Kind::Date(dt::Date::default()),
        DataType::Timestamp(_, Some(_)) => Kind::Timestamp(dt::Timestamp::default()),
        DataType::Timestamp(_, None) => Kind::TimestampNtz(dt::TimestampNtz::default()),
        DataType::Interval(IntervalUnit::YearMonth) => {
            Kind::YearMonthInterval(dt::YearMonthInterval::default())
        }
        DataType::Duration(_) => Kind::DayTimeInterval(dt::DayTimeInterval::default()),
        DataType::Interval(_) => Kind::CalendarInterval(dt::CalendarInterval::default()),
        DataType::List(f) => Kind::Array(Box::new(dt::Array {
            element_type: Some(Box::new(spark_type(f.data_type()))),
            contains_null: f.is_nullable(),
            type_variation_reference: 0,
        })),
        DataType::Struct(fields) => Kind::Struct(dt::Struct {
            fields: fields.iter().map(|f| spark_field(f)).collect(),
            type_variation_reference: 0,
        }),
        DataType::Map(entries, _) => {
            let (key, value) = match entries.data_type() {
                DataType::Struct(kv) if kv.len() == 2 => (kv[0].clone(), kv[1].clone()),
                _ => (
                    Arc::new(Field::new("key", DataType::Utf8, false)),
                    Arc::new(Field::new("value", DataType::Utf8, true)),
                ),
            };
            Kind::Map(Box::new(dt::Map {
                key_type: Some(Box::new(spark_type(key.data_type()))),
                value_type: Some(Box::new(spark_type(value.data_type()))),
                value_contains_null: value.is_nullable(),
                type_variation_reference: 0,
            }))
        }
        _ => Kind::String(dt::String::default()),
    };
    sc::DataType { kind: Some(kind) }
}

/// The Arrow type a PySpark client reads for a column of type `data_type`: Spark has no
/// view, large or unsigned types, and keeps timestamps in microseconds.
pub fn client_type(data_type: &DataType) -> DataType {
    match data_type {
        DataType::Utf8View | DataType::LargeUtf8 => DataType::Utf8,
        DataType::BinaryView | DataType::LargeBinary | DataType::FixedSizeBinary(_) => {
            DataType::Binary
        }
        DataType::UInt8 => DataType::Int16,
        DataType::UInt16 => DataType::Int32,
        DataType::UInt32 => DataType::Int64,
        DataType::UInt64 => DataType::Decimal128(20, 0),
        DataType::Float16 => DataType::Float32,
        DataType::Date64 => DataType::Date32,
        DataType::Decimal32(p, s) | DataType::Decimal64(p, s) => DataType::Decimal128(*p, *s),
        DataType::Timestamp(_, tz) => DataType::Timestamp(TimeUnit::Microsecond, tz.clone()),
        DataType::Time32(_) | DataType::Time64(_) => DataType::Utf8,
        DataType::Dictionary(_, value) => client_type(value),
        DataType::List(f)
        | DataType::LargeList(f)
        | DataType::ListView(f)
        | DataType::LargeListView(f)
        | DataType::FixedSizeList(f, _) => {
            DataType::List(Arc::new(client_field(f).with_name("element")))
        }
        DataType::Struct(fields) => {
            DataType::Struct(fields.iter().map(|f| client_field(f)).collect())
        }
        DataType::Map(entries, sorted) => DataType::Map(Arc::new(client_field(entries)), *sorted),
        other => other.clone(),
    }
}

fn client_field(field: &Field) -> Field {
    Field::new(
        field.name(),
        client_type(field.data_type()),
        field.is_nullable(),
    )
}

/// A Spark Connect literal as a DataFusion value.
pub fn scalar(literal: &Literal) -> Result<ScalarValue> {
    let Some(value) = &literal.literal_type else {
        return Err(EmberError::User("a literal without a value".into()));
    };
    Ok(match value {
        LiteralType::Null(t) => ScalarValue::try_from(&arrow_type(t)?)?,
        LiteralType::Binary(b) => ScalarValue::Binary(Some(b.clone())),
        LiteralType::Boolean(b) => ScalarValue::Boolean(Some(*b)),
        LiteralType::Byte(v) => ScalarValue::Int8(Some(*v as i8)),
        LiteralType::Short(v) => ScalarValue::Int16(Some(*v as i16)),
        LiteralType::Integer(v) => ScalarValue::Int32(Some(*v)),
        LiteralType::Long(v) => ScalarValue::Int64(Some(*v)),
        LiteralType::Float(v) => ScalarValue::Float32(Some(*v)),
        LiteralType::Double(v) => ScalarValue::Float64(Some(*v)),
        LiteralType::Decimal(d) => decimal(d)?,
        LiteralType::String(s) => ScalarValue::Utf8(Some(s.clone())),
        LiteralType::Date(days) => ScalarValue::Date32(Some(*days)),
        LiteralType::Timestamp(us) => {
            ScalarValue::TimestampMicrosecond(Some(*us), Some("UTC".into()))
        }
        LiteralType::TimestampNtz(us) => ScalarValue::TimestampMicrosecond(Some(*us), None),
        LiteralType::YearMonthInterval(months) => ScalarValue::IntervalYearMonth(Some(*months)),
        LiteralType::DayTimeInterval(us) => ScalarValue::DurationMicrosecond(Some(*us)),
        LiteralType::CalendarInterval(i) => ScalarValue::IntervalMonthDayNano(Some(
            datafusion::arrow::datatypes::IntervalMonthDayNano::new(
                i.months,
                i.days,
                i.microseconds * 1000,
            ),
        )),
        LiteralType::Array(a) => {
            let values = a.elements.iter().map(scalar).collect::<Result<Vec<_>>>()?;
            let element = match (&literal.data_type, values.first()) {
                (_, Some(first)) => first.data_type(),
                _ => DataType::Null,
            };
            ScalarValue::List(ScalarValue::new_list_nullable(&values, &element))
        }
        other => return Err(unsupported("literal", &format!("{other:?}"))),
    })
}

fn decimal(d: &sc::expression::literal::Decimal) -> Result<ScalarValue> {
    // As Spark reads it: the value's own precision and scale, widened to those given.
    let text = d.value.trim();
    let (int, frac) = text.split_once('.').unwrap_or((text, ""));
    let scale = (frac.len() as i32).max(d.scale.unwrap_or(0));
    let digits = format!("{int}{frac:0<width$}", width = scale.max(0) as usize);
    let value: i128 = digits
        .parse()
        .map_err(|_| EmberError::User(format!("not a decimal: {text}")))?;
    let own = digits.trim_start_matches('-').trim_start_matches('0').len() as i32;
    let precision = own.max(d.precision.unwrap_or(0)).max(scale).max(1);
    if precision > 38 {
        return Err(EmberError::User(format!(
            "the decimal {text} needs more than 38 digits"
        )));
    }
    Ok(ScalarValue::Decimal128(
        Some(value),
        precision as u8,
        scale as i8,
    ))
}

/// A Spark type name (`int`, `bigint`, `decimal(10,2)`, `array<string>`,
/// `struct<a:int,b:string>`, `map<string,int>`) as an Arrow type.
pub fn parse_type(text: &str) -> Result<DataType> {
    let mut parser = TypeParser::new(text);
    let data_type = parser.data_type()?;
    parser.end()?;
    Ok(data_type)
}

/// A schema as Spark writes one in DDL (`a INT, b STRING`) or as JSON (`df.schema.json()`).
pub fn parse_schema(text: &str) -> Result<Schema> {
    let text = text.trim();
    if text.starts_with('{') {
        return json_schema(text);
    }
    let mut parser = TypeParser::new(text);
    let fields = parser.fields(None)?;
    parser.end()?;
    Ok(Schema::new(fields))
}

fn json_schema(text: &str) -> Result<Schema> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| EmberError::User(format!("not a schema: {e}")))?;
    match json_type(&value)? {
        DataType::Struct(fields) => Ok(Schema::new(fields)),
        other => Ok(Schema::new(vec![Field::new("value", other, true)])),
    }
}

fn json_type(value: &serde_json::Value) -> Result<DataType> {
    use serde_json::Value;
    match value {
        Value::String(name) => parse_type(name),
        Value::Object(o) => match o.get("type").and_then(Value::as_str) {
            Some("struct") => {
                let fields = o.get("fields").and_then(Value::as_array);
                let fields = fields.into_iter().flatten().map(|f| {
                    let name = f.get("name").and_then(Value::as_str).unwrap_or_default();
                    let nullable = f.get("nullable").and_then(Value::as_bool).unwrap_or(true);
                    let data_type = json_type(f.get("type").unwrap_or(&Value::Null))?;
                    Ok(Field::new(name, data_type, nullable))
                });
                Ok(DataType::Struct(fields.collect::<Result<Fields>>()?))
            }
            Some("array") => {
                let element = json_type(o.get("elementType").unwrap_or(&Value::Null))?;
                let nullable = o.get("containsNull").and_then(Value::as_bool);
                Ok(DataType::List(Arc::new(Field::new(
                    "element",
                    element,
                    nullable.unwrap_or(true),
                ))))
            }
            Some("map") => {
                let key = json_type(o.get("keyType").unwrap_or(&Value::Null))?;
                let value = json_type(o.get("valueType").unwrap_or(&Value::Null))?;
                Ok(map_type(key, value))
            }
            other => Err(unsupported("schema type", &format!("{other:?}"))),
        },
        other => Err(EmberError::User(format!("not a schema type: {other}"))),
    }
}

fn map_type(key: DataType, value: DataType) -> DataType {
    let entries = Field::new(
        "entries",
        DataType::Struct(Fields::from(vec![
            Field::new("key", key, false),
            Field::new("value", value, true),
        ])),
        false,
    );
    DataType::Map(Arc::new(entries), false)
}

/// A small recursive-descent reader of Spark's type grammar.
struct TypeParser<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> TypeParser<'a> {
    fn new(text: &'a str) -> Self {
        Self { text, at: 0 }
    }

    fn skip_space(&mut self) {
        while self.text[self.at..].starts_with(char::is_whitespace) {
            self.at += 1;
        }
    }

    fn peek(&mut self) -> Option<char> {
        self.skip_space();
        self.text[self.at..].chars().next()
    }

    fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(c) {
            self.at += c.len_utf8();
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: char) -> Result<()> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(self.error(&format!("expected '{c}'")))
        }
    }

    fn error(&self, what: &str) -> EmberError {
        EmberError::User(format!(
            "cannot read the type {:?}: {what} at position {}",
            self.text, self.at
        ))
    }

    fn end(&mut self) -> Result<()> {
        match self.peek() {
            None => Ok(()),
            Some(_) => Err(self.error("unexpected text")),
        }
    }

    fn word(&mut self) -> Result<String> {
        self.skip_space();
        if self.eat('`') {
            let rest = &self.text[self.at..];
            let end = rest.find('`').ok_or_else(|| self.error("unclosed `"))?;
            let word = rest[..end].to_string();
            self.at += end + 1;
            return Ok(word);
        }
        let rest = &self.text[self.at..];
        let end = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        if end == 0 {
            return Err(self.error("expected a name"));
        }
        self.at += end;
        Ok(rest[..end].to_string())
    }

    fn number(&mut self) -> Result<i64> {
        let word = self.word()?;
        word.parse().map_err(|_| self.error("expected a number"))
    }

    /// `name type, ...` (DDL, `separator` None) or `name:type, ...` (inside `struct<>`).
    fn fields(&mut self, separator: Option<char>) -> Result<Vec<Field>> {
        let mut fields = Vec::new();
        loop {
            let name = self.word()?;
            if let Some(c) = separator {
                self.expect(c)?;
            } else {
                self.eat(':');
            }
            let data_type = self.data_type()?;
            let mut nullable = true;
            let rest = self.text[self.at..].trim_start().to_ascii_lowercase();
            if rest.starts_with("not null") {
                self.skip_space();
                self.at += "not null".len();
                nullable = false;
            }
            fields.push(Field::new(name, data_type, nullable));
            if !self.eat(',') {
                return Ok(fields);
            }
        }
    }

    fn data_type(&mut self) -> Result<DataType> {
        let name = self.word()?.to_ascii_lowercase();
        Ok(match name.as_str() {
            "boolean" | "bool" => DataType::Boolean,
            "tinyint" | "byte" => DataType::Int8,
            "smallint" | "short" => DataType::Int16,
            "int" | "integer" => DataType::Int32,
            "bigint" | "long" => DataType::Int64,
            "float" | "real" => DataType::Float32,
            "double" => DataType::Float64,
            "string" => DataType::Utf8,
            "char" | "varchar" => {
                if self.eat('(') {
                    self.number()?;
                    self.expect(')')?;
                }
                DataType::Utf8
            }
            "binary" => DataType::Binary,
            "date" => DataType::Date32,
            "timestamp" | "timestamp_ltz" => {
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
            }
            "timestamp_ntz" => DataType::Timestamp(TimeUnit::Microsecond, None),
            "void" | "null" => DataType::Null,
            "decimal" | "dec" | "numeric" => {
                let (mut precision, mut scale) = (10, 0);
                if self.eat('(') {
                    precision = self.number()?;
                    if self.eat(',') {
                        scale = self.number()?;
                    }
                    self.expect(')')?;
                }
                if !(1..=38).contains(&precision) || scale > precision || scale < 0 {
                    return Err(self.error("decimal precision must be 1 to 38, scale 0 to it"));
                }
                DataType::Decimal128(precision as u8, scale as i8)
            }
            "array" => {
                self.expect('<')?;
                let element = self.data_type()?;
                self.expect('>')?;
                DataType::List(Arc::new(Field::new("element", element, true)))
            }
            "map" => {
                self.expect('<')?;
                let key = self.data_type()?;
                self.expect(',')?;
                let value = self.data_type()?;
                self.expect('>')?;
                map_type(key, value)
            }
            "struct" => {
                self.expect('<')?;
                let fields = if self.peek() == Some('>') {
                    Vec::new()
                } else {
                    self.fields(Some(':'))?
                };
                self.expect('>')?;
                DataType::Struct(Fields::from(fields))
            }
            other => return Err(unsupported("data type", other)),
        })
    }
}

/// Spark's name for a type, as in `CAST(x AS INT)` column names.
pub fn type_name(data_type: &DataType) -> String {
    match data_type {
        DataType::Boolean => "BOOLEAN".into(),
        DataType::Int8 => "TINYINT".into(),
        DataType::Int16 => "SMALLINT".into(),
        DataType::Int32 => "INT".into(),
        DataType::Int64 => "BIGINT".into(),
        DataType::Float32 => "FLOAT".into(),
        DataType::Float64 => "DOUBLE".into(),
        DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8 => "STRING".into(),
        DataType::Binary => "BINARY".into(),
        DataType::Date32 => "DATE".into(),
        DataType::Timestamp(_, Some(_)) => "TIMESTAMP".into(),
        DataType::Timestamp(_, None) => "TIMESTAMP_NTZ".into(),
        DataType::Decimal128(p, s) => format!("DECIMAL({p},{s})"),
        DataType::List(f) => format!("ARRAY<{}>", type_name(f.data_type())),
        other => other.to_string().to_uppercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spark_type_names_read_as_arrow_types() {
        assert_eq!(parse_type("int").unwrap(), DataType::Int32);
        assert_eq!(parse_type(" BIGINT ").unwrap(), DataType::Int64);
        assert_eq!(
            parse_type("decimal(12, 2)").unwrap(),
            DataType::Decimal128(12, 2)
        );
        assert_eq!(
            parse_type("array<string>").unwrap(),
            DataType::List(Arc::new(Field::new("element", DataType::Utf8, true)))
        );
        let schema = parse_schema("a INT, `b c` STRING NOT NULL, d struct<x:double>").unwrap();
        assert_eq!(schema.fields().len(), 3);
        assert_eq!(schema.field(1).name(), "b c");
        assert!(!schema.field(1).is_nullable());
        assert!(parse_type("decimal(40,2)").is_err());
        let err = parse_type("intt").unwrap_err().to_string();
        assert!(err.contains("intt"), "{err}");
    }

    #[test]
    fn json_schemas_as_pyspark_sends_them() {
        let json = r#"{"type":"struct","fields":[{"name":"id","type":"long","nullable":true,"metadata":{}},{"name":"tags","type":{"type":"array","elementType":"string","containsNull":true},"nullable":true,"metadata":{}}]}"#;
        let schema = parse_schema(json).unwrap();
        assert_eq!(schema.field(0).data_type(), &DataType::Int64);
        assert!(matches!(schema.field(1).data_type(), DataType::List(_)));
    }

    #[test]
    fn results_use_types_pyspark_reads() {
        assert_eq!(client_type(&DataType::Utf8View), DataType::Utf8);
        assert_eq!(client_type(&DataType::UInt64), DataType::Decimal128(20, 0));
        assert_eq!(
            client_type(&DataType::Timestamp(TimeUnit::Nanosecond, None)),
            DataType::Timestamp(TimeUnit::Microsecond, None)
        );
        let kind = spark_type(&DataType::Utf8View).kind.unwrap();
        assert!(matches!(kind, Kind::String(_)));
    }

    #[test]
    fn decimal_literals_keep_their_scale() {
        let d = sc::expression::literal::Decimal {
            value: "-12.50".into(),
            precision: None,
            scale: None,
        };
        assert_eq!(
            decimal(&d).unwrap(),
            ScalarValue::Decimal128(Some(-1250), 4, 2)
        );
        // PySpark sends `lit(Decimal("0.05"))` typed decimal(10,0): the value keeps its scale.
        let d = sc::expression::literal::Decimal {
            value: "0.05".into(),
            precision: Some(10),
            scale: Some(0),
        };
        assert_eq!(
            decimal(&d).unwrap(),
            ScalarValue::Decimal128(Some(5), 10, 2)
        );
    }
}
