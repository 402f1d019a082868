//! The broker's access rules for one edge, from its site file: it may publish only its own
//! devices' data and its own status (its last will included), and read only the gateway's
//! commit marks for it. `ems-edge acl --config edge.toml` prints them for Mosquitto's
//! `acl_file` or EMQX's `acl.conf` (docs/deployment.md, "Broker access").

use ems_core::wire::topic;

use crate::Site;

/// What one edge may do at the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeAccess {
    /// The MQTT username it connects as: `[mqtt] username`, else its edge id (a client
    /// certificate whose common name is the edge id, with Mosquitto's
    /// `use_identity_as_username`).
    pub user: String,
    pub publish: Vec<String>,
    pub subscribe: Vec<String>,
}

impl EdgeAccess {
    pub fn of(site: &Site) -> EdgeAccess {
        let c = &site.config;
        let prefix = &c.mqtt.topic_prefix;
        let mut publish: Vec<String> = site
            .devices
            .iter()
            .map(|d| topic::data(prefix, &c.site, &d.id))
            .collect();
        publish.push(topic::status(prefix, &c.site, &c.edge_id));
        EdgeAccess {
            user: c.mqtt.username.clone().unwrap_or_else(|| c.edge_id.clone()),
            publish,
            subscribe: vec![topic::ack(prefix, &c.site, &c.edge_id)],
        }
    }

    /// Lines for Mosquitto's `acl_file`.
    pub fn mosquitto(&self) -> String {
        let mut out = format!("user {}\n", self.user);
        for t in &self.publish {
            out += &format!("topic write {t}\n");
        }
        for t in &self.subscribe {
            out += &format!("topic read {t}\n");
        }
        out
    }

    /// Rules for EMQX's `acl.conf` (Erlang terms; end the file with `{deny, all}.`).
    pub fn emqx(&self) -> String {
        let list = |topics: &[String]| {
            topics
                .iter()
                .map(|t| format!("{{eq, \"{t}\"}}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "{{allow, {{username, \"{0}\"}}, publish, [{1}]}}.\n{{allow, {{username, \"{0}\"}}, subscribe, [{2}]}}.\n",
            self.user,
            list(&self.publish),
            list(&self.subscribe)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_edge_may_publish_its_own_devices_and_status_and_read_its_marks() {
        let text = crate::config::DEMO_CONFIG;
        let site = Site::from_source(&ems_config::Source::embedded("demo.toml", text)).unwrap();
        let access = EdgeAccess::of(&site);
        assert_eq!(access.user, "edge-1");
        assert_eq!(access.publish.len(), site.devices.len() + 1);
        assert!(access
            .publish
            .contains(&"ems/v1/demo/data/bf1-coke".to_string()));
        assert!(access
            .publish
            .contains(&"ems/v1/demo/status/edge-1".to_string()));
        assert!(access.publish.iter().all(|t| !t.contains(['+', '#'])));
        assert_eq!(access.subscribe, ["ems/v1/demo/ack/edge-1"]);
        let m = access.mosquitto();
        assert!(m.starts_with("user edge-1\n"));
        assert!(m.contains("topic write ems/v1/demo/data/bf1-coke\n"));
        assert!(m.contains("topic read ems/v1/demo/ack/edge-1\n"));
        let e = access.emqx();
        assert!(e.contains("{allow, {username, \"edge-1\"}, publish, [{eq, \"ems/v1/demo/data/"));
    }
}
