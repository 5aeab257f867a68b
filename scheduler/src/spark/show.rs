//! `df.show()`: the table Spark prints, built from the first rows of a result.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use ember_core::Result;

/// Spark's text for the first `rows` rows of `batches` (which hold up to `rows + 1`, to know
/// whether there are more): cells cut to `truncate` characters (0: whole), right-aligned when
/// cut, or one block per row when `vertical`.
pub fn show_string(
    schema: &Schema,
    batches: &[RecordBatch],
    rows: usize,
    truncate: usize,
    vertical: bool,
) -> Result<String> {
    let options = FormatOptions::default().with_null("null");
    let mut cells: Vec<Vec<String>> = Vec::new();
    'batches: for batch in batches {
        let formatters = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        for row in 0..batch.num_rows() {
            if cells.len() > rows {
                break 'batches;
            }
            cells.push(
                formatters
                    .iter()
                    .map(|f| cut(&f.value(row).to_string(), truncate))
                    .collect(),
            );
        }
    }
    let more = cells.len() > rows;
    cells.truncate(rows);
    let header: Vec<String> = schema
        .fields()
        .iter()
        .map(|f| cut(f.name(), truncate))
        .collect();
    let mut out = String::new();
    if vertical {
        let name_width = header.iter().map(|h| width(h)).max().unwrap_or(0);
        let value_width = cells.iter().flatten().map(|c| width(c)).max().unwrap_or(0);
        for (i, row) in cells.iter().enumerate() {
            let title = format!("-RECORD {i}");
            let line_width = name_width + value_width + 5;
            out.push_str(&format!(
                "{title}{}\n",
                "-".repeat(line_width.saturating_sub(width(&title)))
            ));
            for (name, value) in header.iter().zip(row) {
                out.push_str(&format!(
                    " {}{} | {}{} \n",
                    name,
                    " ".repeat(name_width - width(name)),
                    value,
                    " ".repeat(value_width - width(value))
                ));
            }
        }
        if cells.is_empty() {
            out.push_str("(0 rows)\n");
        }
    } else {
        let mut widths: Vec<usize> = header.iter().map(|h| width(h).max(3)).collect();
        for row in &cells {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(width(cell));
            }
        }
        let line: String = widths
            .iter()
            .map(|w| format!("+{}", "-".repeat(*w)))
            .collect::<String>()
            + "+\n";
        let render = |row: &[String]| -> String {
            let mut s = String::new();
            for (cell, w) in row.iter().zip(&widths) {
                let pad = " ".repeat(w - width(cell));
                if truncate > 0 {
                    s.push_str(&format!("|{pad}{cell}"));
                } else {
                    s.push_str(&format!("|{cell}{pad}"));
                }
            }
            s + "|\n"
        };
        out.push_str(&line);
        out.push_str(&render(&header));
        out.push_str(&line);
        for row in &cells {
            out.push_str(&render(row));
        }
        out.push_str(&line);
    }
    if more {
        let noun = if rows == 1 { "row" } else { "rows" };
        out.push_str(&format!("only showing top {rows} {noun}\n"));
    }
    Ok(out)
}

/// The one-row, one-column batch `show()` answers with.
pub fn show_batch(text: String) -> Result<RecordBatch> {
    let schema = Arc::new(Schema::new(vec![Field::new(
        "show_string",
        DataType::Utf8,
        false,
    )]));
    let column: ArrayRef = Arc::new(StringArray::from(vec![text]));
    Ok(RecordBatch::try_new(schema, vec![column])?)
}

fn width(s: &str) -> usize {
    s.chars().count()
}

fn cut(s: &str, truncate: usize) -> String {
    if truncate == 0 || width(s) <= truncate {
        return s.to_string();
    }
    if truncate < 4 {
        return s.chars().take(truncate).collect();
    }
    let kept: String = s.chars().take(truncate - 3).collect();
    kept + "..."
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::Int64Array;

    fn batch() -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(vec![1, 22, 333])),
                Arc::new(StringArray::from(vec![
                    Some("a"),
                    None,
                    Some("a rather long name indeed"),
                ])),
            ],
        )
        .unwrap()
    }

    #[test]
    fn shows_as_spark_prints_a_table() {
        let b = batch();
        let text = show_string(&b.schema(), std::slice::from_ref(&b), 2, 20, false).unwrap();
        let expected = "+---+----+\n\
                        | id|name|\n\
                        +---+----+\n\
                        |  1|   a|\n\
                        | 22|null|\n\
                        +---+----+\n\
                        only showing top 2 rows\n";
        assert_eq!(text, expected);
        let text = show_string(&b.schema(), std::slice::from_ref(&b), 20, 20, false).unwrap();
        assert!(text.contains("|333|a rather long nam...|"), "{text}");
        assert!(!text.contains("only showing"));
        let text = show_string(&b.schema(), &[b], 20, 0, false).unwrap();
        assert!(text.contains("|333|a rather long name indeed|"), "{text}");
    }

    #[test]
    fn shows_rows_vertically() {
        let b = batch();
        let text = show_string(&b.schema(), &[b], 1, 20, true).unwrap();
        assert!(text.starts_with("-RECORD 0"), "{text}");
        assert!(text.contains(" id   | 1 "), "{text}");
        assert!(text.ends_with("only showing top 1 row\n"), "{text}");
    }
}
