//! What `connection remove` does with the comments around the table it removes: it
//! takes the ones that belong to it and keeps the ones about what follows or the file.

use toml_edit::{DocumentMut, Item, Table};

/// toml_edit files every comment above a table header with that table, also a block that a
/// blank line sets apart from it, which is about what follows or the whole file (`# managed
/// by ansible`). Only the comment lines right above a removed table's header (or its
/// sub-tables') go with it; such blocks move, in their order, above the next table, or to
/// the end of the file when none follows.
pub(super) fn keep_loose_comments(doc: &mut DocumentMut, removed: &Item) {
    let mut gone = Vec::new();
    headed_tables(removed, &mut |table| {
        if let Some(at) = table.position() {
            let prefix = table
                .decor()
                .prefix()
                .and_then(|p| p.as_str())
                .unwrap_or("");
            gone.push((at, loose_comments(prefix).to_owned()));
        }
    });
    gone.sort_by_key(|(at, _)| *at);
    let Some(last) = gone.last().map(|(at, _)| *at) else {
        return;
    };
    let blocks: Vec<&str> = gone
        .iter()
        .map(|(_, text)| text.trim_start_matches(['\n', '\r']))
        .filter(|text| !text.is_empty())
        .collect();
    if blocks.is_empty() {
        return;
    }
    // A blank line before each block and after the last, as they stood.
    let kept = format!("\n{}", blocks.join("\n"));
    let mut next: Option<isize> = None;
    for (_, item) in doc.iter() {
        headed_tables(item, &mut |table| {
            if let Some(at) = table.position().filter(|at| *at > last) {
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        });
    }
    let Some(next) = next else {
        let trailing = doc.trailing().as_str().unwrap_or("").to_owned();
        doc.set_trailing(format!("{trailing}{kept}"));
        return;
    };
    for (_, item) in doc.iter_mut() {
        headed_tables_mut(item, &mut |table| {
            if table.position() == Some(next) {
                let prefix = table
                    .decor()
                    .prefix()
                    .and_then(|p| p.as_str())
                    .unwrap_or("\n");
                let prefix = format!("{kept}\n{}", prefix.trim_start_matches(['\n', '\r']));
                table.decor_mut().set_prefix(prefix);
            }
        });
    }
}

/// The part of a table's prefix that is not the comment block right above its header:
/// everything up to the last blank line before it, without its trailing blank lines; empty
/// when that part holds no comment.
fn loose_comments(prefix: &str) -> &str {
    let mut attached_from = prefix.len();
    for line in prefix.split_inclusive('\n').rev() {
        if !line.trim_start().starts_with('#') {
            break;
        }
        attached_from -= line.len();
    }
    let loose = prefix[..attached_from].trim_end_matches([' ', '\t', '\r', '\n']);
    if loose.lines().any(|line| line.trim_start().starts_with('#')) {
        // Keep the line end of its last comment.
        &prefix[..loose.len() + prefix[loose.len()..].find('\n').map_or(0, |n| n + 1)]
    } else {
        ""
    }
}

/// Calls `visit` on `item` and every table under it that has a `[header]` of its own.
fn headed_tables(item: &Item, visit: &mut dyn FnMut(&Table)) {
    let tables: Vec<&Table> = match item {
        Item::Table(table) => vec![table],
        Item::ArrayOfTables(array) => array.iter().collect(),
        _ => return,
    };
    for table in tables {
        if !table.is_implicit() {
            visit(table);
        }
        for (_, inner) in table.iter() {
            headed_tables(inner, visit);
        }
    }
}

fn headed_tables_mut(item: &mut Item, visit: &mut dyn FnMut(&mut Table)) {
    let tables: Vec<&mut Table> = match item {
        Item::Table(table) => vec![table],
        Item::ArrayOfTables(array) => array.iter_mut().collect(),
        _ => return,
    };
    for table in tables {
        if !table.is_implicit() {
            visit(table);
        }
        for (_, inner) in table.iter_mut() {
            headed_tables_mut(inner, visit);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::keep_loose_comments;
    use toml_edit::{DocumentMut, Item};

    /// `text` with connection `name` removed as `connection remove` removes it.
    fn removed(text: &str, name: &str) -> String {
        let mut doc: DocumentMut = text.parse().expect("test TOML");
        let gone = doc
            .get_mut("connections")
            .and_then(Item::as_table_mut)
            .and_then(|t| t.remove(name))
            .expect("the connection");
        keep_loose_comments(&mut doc, &gone);
        doc.to_string()
    }

    #[test]
    fn a_comment_set_apart_by_a_blank_line_outlives_the_table_below_it() {
        let text = "relay = \"r:1\"\n\n# Connections: one per internal API.\n\n# orders' API\n[connections.orders]\nbase_uri = \"http://o\"\n\n# stock's API\n[connections.stock]\nbase_uri = \"http://s\"\n";
        assert_eq!(
            removed(text, "orders"),
            "relay = \"r:1\"\n\n# Connections: one per internal API.\n\n# stock's API\n[connections.stock]\nbase_uri = \"http://s\"\n"
        );
        // The last table's goes to the end of the file; its sub-table's too, in order.
        let text = "relay = \"r:1\"\n[connections.a]\nbase_uri = \"http://a\"\n\n# keep 1\n\n# a's\n[connections.b]\nbase_uri = \"http://b\"\n\n# keep 2\n\n[connections.b.auth]\ntype = \"none\"\n";
        assert_eq!(
            removed(text, "b"),
            "relay = \"r:1\"\n[connections.a]\nbase_uri = \"http://a\"\n\n# keep 1\n\n# keep 2\n"
        );
    }

    #[test]
    fn only_comment_lines_right_above_the_header_go_with_it() {
        let text = "relay = \"r:1\"\n\n# orders' API\n# (two lines)\n[connections.orders]\nbase_uri = \"http://o\"\n\n[connections.stock]\nbase_uri = \"http://s\"\n";
        assert_eq!(
            removed(text, "orders"),
            "relay = \"r:1\"\n\n[connections.stock]\nbase_uri = \"http://s\"\n"
        );
    }
}
