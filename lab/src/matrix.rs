//! The connectivity matrix of `lab check`: the result of every ordered pair
//! of pods and its two renderings (a table for people, JSON for tests).

use std::collections::HashMap;

use serde::Serialize;

/// The outcome of probing one ordered pair of pods.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PairResult {
    pub from: String,
    pub to: String,
    pub icmp: bool,
    pub tcp: bool,
    /// Round-trip time of the echo that got an answer, in microseconds.
    pub icmp_rtt_us: Option<u64>,
    pub icmp_error: Option<String>,
    pub tcp_error: Option<String>,
}

impl PairResult {
    pub fn ok(&self) -> bool {
        self.icmp && self.tcp
    }

    /// The matrix cell: `ok`, `icmp✗`, `tcp✗`, or `✗` when both failed.
    pub fn cell(&self) -> &'static str {
        match (self.icmp, self.tcp) {
            (true, true) => "ok",
            (false, true) => "icmp✗",
            (true, false) => "tcp✗",
            (false, false) => "✗",
        }
    }
}

/// All pairs among `pods` (ordered, a pod never probes itself).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Matrix {
    pub pods: Vec<String>,
    pub pairs: Vec<PairResult>,
}

/// The JSON form of `lab check --json`.
#[derive(Serialize)]
struct MatrixJson<'a> {
    ok: bool,
    ok_pairs: usize,
    total_pairs: usize,
    pods: &'a [String],
    pairs: &'a [PairResult],
}

impl Matrix {
    pub fn ok_pairs(&self) -> usize {
        self.pairs.iter().filter(|p| p.ok()).count()
    }

    pub fn all_ok(&self) -> bool {
        self.ok_pairs() == self.pairs.len()
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(&MatrixJson {
            ok: self.all_ok(),
            ok_pairs: self.ok_pairs(),
            total_pairs: self.pairs.len(),
            pods: &self.pods,
            pairs: &self.pairs,
        })
        .expect("matrix serializes")
    }

    /// Rows are sources, columns destinations, `-` on the diagonal; then a
    /// summary line and one line per failed pair with the reasons.
    pub fn render(&self) -> String {
        let cells: HashMap<(&str, &str), &PairResult> = self
            .pairs
            .iter()
            .map(|p| ((p.from.as_str(), p.to.as_str()), p))
            .collect();
        let corner = "from\\to";
        let mut rows: Vec<Vec<String>> = Vec::new();
        rows.push(
            std::iter::once(corner.to_string())
                .chain(self.pods.iter().cloned())
                .collect(),
        );
        for from in &self.pods {
            let mut row = vec![from.clone()];
            for to in &self.pods {
                let cell = match cells.get(&(from.as_str(), to.as_str())) {
                    Some(p) => p.cell(),
                    None if from == to => "-",
                    None => "?",
                };
                row.push(cell.to_string());
            }
            rows.push(row);
        }
        let mut out = render_table(&rows);
        out.push_str(&format!(
            "{}/{} pairs ok\n",
            self.ok_pairs(),
            self.pairs.len()
        ));
        for p in self.pairs.iter().filter(|p| !p.ok()) {
            let mut reasons = Vec::new();
            if let Some(e) = &p.icmp_error {
                reasons.push(format!("icmp: {e}"));
            }
            if let Some(e) = &p.tcp_error {
                reasons.push(format!("tcp: {e}"));
            }
            out.push_str(&format!(
                "FAIL {} -> {}: {}\n",
                p.from,
                p.to,
                reasons.join("; ")
            ));
        }
        out
    }
}

/// Left-aligned columns separated by two spaces, padded by characters (not
/// bytes, for `✗`); no trailing spaces.
pub fn render_table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            line.push_str(cell);
            if c + 1 < row.len() {
                line.push_str(&" ".repeat(widths[c] - cell.chars().count() + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(from: &str, to: &str, icmp: bool, tcp: bool) -> PairResult {
        PairResult {
            from: from.into(),
            to: to.into(),
            icmp,
            tcp,
            icmp_rtt_us: icmp.then_some(80),
            icmp_error: (!icmp)
                .then(|| "no echo reply from 10.244.2.2 after 3 tries of 1000 ms".into()),
            tcp_error: (!tcp).then(|| "connect to 10.244.2.2:40000: timed out".into()),
        }
    }

    #[test]
    fn renders_rows_from_columns_to() {
        let matrix = Matrix {
            pods: vec!["node1-a".into(), "node2-a".into(), "node2-b".into()],
            pairs: vec![
                pair("node1-a", "node2-a", true, true),
                pair("node1-a", "node2-b", false, true),
                pair("node2-a", "node1-a", true, false),
                pair("node2-a", "node2-b", true, true),
                pair("node2-b", "node1-a", false, false),
                pair("node2-b", "node2-a", true, true),
            ],
        };
        assert!(!matrix.all_ok());
        assert_eq!(
            matrix.render(),
            "from\\to  node1-a  node2-a  node2-b\n\
             node1-a  -        ok       icmp✗\n\
             node2-a  tcp✗     -        ok\n\
             node2-b  ✗        ok       -\n\
             3/6 pairs ok\n\
             FAIL node1-a -> node2-b: icmp: no echo reply from 10.244.2.2 after 3 tries of 1000 ms\n\
             FAIL node2-a -> node1-a: tcp: connect to 10.244.2.2:40000: timed out\n\
             FAIL node2-b -> node1-a: icmp: no echo reply from 10.244.2.2 after 3 tries of 1000 ms; \
             tcp: connect to 10.244.2.2:40000: timed out\n"
        );
        let json: serde_json::Value = serde_json::from_str(&matrix.to_json()).unwrap();
        assert_eq!(json["ok"], false);
        assert_eq!(json["ok_pairs"], 3);
        assert_eq!(json["total_pairs"], 6);
        assert_eq!(json["pairs"][1]["icmp"], false);
        assert_eq!(json["pairs"][0]["icmp_rtt_us"], 80);
    }

    #[test]
    fn all_ok_when_every_pair_passes() {
        let matrix = Matrix {
            pods: vec!["a".into(), "b".into()],
            pairs: vec![pair("a", "b", true, true), pair("b", "a", true, true)],
        };
        assert!(matrix.all_ok());
        assert_eq!(
            matrix.render(),
            "from\\to  a   b\na        -   ok\nb        ok  -\n2/2 pairs ok\n"
        );
    }
}
