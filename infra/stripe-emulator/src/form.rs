//! Stripe's form encoding: `a=1&b[c]=2&d[0]=x&e[0][f]=y`.

use std::collections::BTreeMap;

#[derive(Debug, Default, Clone)]
pub struct Form(Vec<(String, String)>);

impl Form {
    pub fn parse(raw: &[u8]) -> Self {
        Self(form_urlencoded::parse(raw).map(|(k, v)| (k.into_owned(), v.into_owned())).collect())
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// Values of `key[0]`, `key[1]`, … (or `key[]`), in order.
    pub fn list(&self, key: &str) -> Vec<String> {
        let prefix = format!("{key}[");
        self.0
            .iter()
            .filter(|(k, _)| k.starts_with(&prefix) && k.ends_with(']') && !k[prefix.len()..k.len() - 1].contains('['))
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// `key[name]=value` pairs (e.g. metadata).
    pub fn map(&self, key: &str) -> BTreeMap<String, String> {
        let prefix = format!("{key}[");
        self.0
            .iter()
            .filter_map(|(k, v)| {
                let rest = k.strip_prefix(&prefix)?.strip_suffix(']')?;
                (!rest.contains('[')).then(|| (rest.to_string(), v.clone()))
            })
            .collect()
    }

    /// The sub-form under `key[i]` for list items of objects, e.g. `line_items[0][price]`.
    pub fn items(&self, key: &str) -> Vec<Form> {
        let mut out: BTreeMap<usize, Form> = BTreeMap::new();
        let prefix = format!("{key}[");
        for (k, v) in &self.0 {
            let Some(rest) = k.strip_prefix(&prefix) else {
                continue;
            };
            let Some(close) = rest.find(']') else {
                continue;
            };
            let Ok(i) = rest[..close].parse::<usize>() else {
                continue;
            };
            let inner = &rest[close + 1..];
            // `[price]` → `price`, `[price_data][currency]` → `price_data[currency]`
            let Some(inner) = inner.strip_prefix('[') else {
                continue;
            };
            let Some(end) = inner.find(']') else { continue };
            let name = format!("{}{}", &inner[..end], &inner[end + 1..]);
            out.entry(i).or_default().0.push((name, v.clone()));
        }
        out.into_values().collect()
    }

    /// The sub-form under `key[…]`, e.g. `subscription_data[metadata][user]` → `metadata[user]`.
    pub fn sub(&self, key: &str) -> Form {
        let prefix = format!("{key}[");
        Form(
            self.0
                .iter()
                .filter_map(|(k, v)| {
                    let rest = k.strip_prefix(&prefix)?;
                    let end = rest.find(']')?;
                    Some((format!("{}{}", &rest[..end], &rest[end + 1..]), v.clone()))
                })
                .collect(),
        )
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(k, _)| k.as_str())
    }

    /// The parameters as the nested object Stripe reads from them: `a[b][0][c]=x` →
    /// `{"a": {"b": [{"c": "x"}]}}`, `e[]=x` → `{"e": ["x"]}`. Every leaf is a string (the
    /// form has no types). Indexes become array positions in their numeric order.
    pub fn to_json(&self) -> serde_json::Value {
        #[derive(Default)]
        struct Node {
            leaf: Option<String>,
            named: BTreeMap<String, Node>,
            indexed: BTreeMap<usize, Node>,
            pushed: Vec<Node>,
        }
        fn into_json(n: Node) -> serde_json::Value {
            if let Some(v) = n.leaf {
                return serde_json::Value::String(v);
            }
            if !n.indexed.is_empty() || !n.pushed.is_empty() {
                let items = n.indexed.into_values().chain(n.pushed);
                return serde_json::Value::Array(items.map(into_json).collect());
            }
            serde_json::Value::Object(n.named.into_iter().map(|(k, v)| (k, into_json(v))).collect())
        }
        let mut root = Node::default();
        for (key, value) in &self.0 {
            let (head, mut rest) = key.split_once('[').map(|(h, r)| (h, Some(r))).unwrap_or((key.as_str(), None));
            let mut node = root.named.entry(head.to_string()).or_default();
            while let Some(r) = rest {
                let (segment, after) = r.split_once(']').unwrap_or((r, ""));
                node = if segment.is_empty() {
                    node.pushed.push(Node::default());
                    node.pushed.last_mut().expect("just pushed")
                } else if let Ok(i) = segment.parse::<usize>() {
                    node.indexed.entry(i).or_default()
                } else {
                    node.named.entry(segment.to_string()).or_default()
                };
                rest = after.strip_prefix('[');
            }
            node.leaf = Some(value.clone());
        }
        into_json(root)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bracket_notation_is_read_like_stripe_does() {
        let f = Form::parse(
            b"mode=subscription&line_items%5B0%5D%5Bprice%5D=price_1&line_items%5B0%5D%5Bquantity%5D=1\
              &metadata%5Buser_name%5D=alice&expand%5B0%5D=subscription&lookup_keys[]=A\
              &subscription_data%5Bmetadata%5D%5Buser_name%5D=alice&subscription_data%5Btransfer_data%5D%5Bdestination%5D=acct_1",
        );
        assert_eq!(f.get("mode"), Some("subscription"));
        let items = f.items("line_items");
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].get("price"), Some("price_1"));
        assert_eq!(items[0].get("quantity"), Some("1"));
        assert_eq!(f.map("metadata").get("user_name").map(String::as_str), Some("alice"));
        assert_eq!(f.list("expand"), vec!["subscription"]);
        assert_eq!(f.list("lookup_keys"), vec!["A"]);
        let sd = f.sub("subscription_data");
        assert_eq!(sd.map("metadata").get("user_name").map(String::as_str), Some("alice"));
        assert_eq!(sd.sub("transfer_data").get("destination"), Some("acct_1"));
        assert_eq!(
            f.to_json(),
            serde_json::json!({
                "mode": "subscription",
                "line_items": [{"price": "price_1", "quantity": "1"}],
                "metadata": {"user_name": "alice"},
                "expand": ["subscription"],
                "lookup_keys": ["A"],
                "subscription_data": {"metadata": {"user_name": "alice"}, "transfer_data": {"destination": "acct_1"}},
            })
        );
        let two = Form::parse(b"items[1][price]=b&items[0][price]=a&expand[]=x&expand[]=y");
        assert_eq!(two.to_json(), serde_json::json!({"items": [{"price": "a"}, {"price": "b"}], "expand": ["x", "y"]}));
    }
}
