//! The README's links lead somewhere: each `](#anchor)` to one of its headings (as GitHub
//! makes their anchors), each relative `](path)` to a file in the repository.

use std::collections::HashSet;
use std::path::Path;

/// GitHub's anchor for a heading's text: lower case, punctuation but `-` and `_` dropped,
/// spaces made `-`; a repeated one gets `-1`, `-2`, ….
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// A Markdown text's lines outside code blocks.
fn outside_code(text: &str) -> Vec<&str> {
    let mut in_code = false;
    text.lines()
        .filter(|line| {
            let fence = line.trim_start().starts_with("```");
            in_code ^= fence;
            !fence && !in_code
        })
        .collect()
}

/// The anchors of a Markdown text's headings.
fn anchors(text: &str) -> HashSet<String> {
    let mut found = HashSet::new();
    for heading in outside_code(text)
        .iter()
        .filter_map(|l| l.strip_prefix('#'))
    {
        let base = anchor(heading.trim_start_matches('#'));
        let mut unique = base.clone();
        let mut n = 0;
        while !found.insert(unique.clone()) {
            n += 1;
            unique = format!("{base}-{n}");
        }
    }
    found
}

/// Every `](target)` in a text's prose: code blocks and code spans left out.
fn links(text: &str) -> Vec<String> {
    let prose: String = outside_code(text)
        .iter()
        // Even pieces between backticks are outside code spans.
        .flat_map(|line| line.split('`').step_by(2).chain(["\n"]))
        .collect();
    prose
        .split("](")
        .skip(1)
        .filter_map(|rest| rest.split_once(')').map(|(target, _)| target.to_owned()))
        .collect()
}

fn broken_links(file: &str) -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let text = std::fs::read_to_string(root.join(file)).expect("the file reads");
    let anchors = anchors(&text);
    links(&text)
        .into_iter()
        .filter(|target| !target.contains("://") && !target.starts_with("mailto:"))
        .filter(|target| match target.strip_prefix('#') {
            Some(anchor) => !anchors.contains(anchor),
            None => {
                let path = target.split('#').next().unwrap_or_default();
                !root.join(path).exists()
            }
        })
        .map(|target| format!("{file}: ]({target})"))
        .collect()
}

#[test]
fn the_readmes_links_lead_somewhere() {
    let broken: Vec<String> = ["README.md", "BENCHMARKS.md", "CHANGELOG.md"]
        .into_iter()
        .flat_map(broken_links)
        .collect();
    assert!(broken.is_empty(), "links to nothing: {broken:#?}");
}

#[test]
fn anchors_are_made_as_github_makes_them() {
    assert_eq!(
        anchor(" Token exchange (RFC 7523)"),
        "token-exchange-rfc-7523"
    );
    assert_eq!(
        anchor(" Version, completions, man pages"),
        "version-completions-man-pages"
    );
    let text = "# A\n```sh\n# not a heading\n```\n## A\n### B_c\n";
    let found = anchors(text);
    let expected: HashSet<String> = ["a", "a-1", "b_c"].map(String::from).into();
    assert_eq!(found, expected);
    assert_eq!(
        links(
            "[x](#a) and [y](CHANGELOG.md) and [z](https://e.x/), not `[w](#w)`\n```\n[v](#v)\n```"
        ),
        ["#a", "CHANGELOG.md", "https://e.x/"]
    );
}
