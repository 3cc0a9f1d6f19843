//! Write Stellwerk channel plugins in plain Rust.
//!
//! A channel plugin governs one or more channel namespaces: who may subscribe, who may
//! publish (and in what form), and what each group of subscribers gets to see. The broker
//! runs it as a WebAssembly component; this crate hides the component ABI
//! (`wit/plugin.wit`, world `stellwerk:plugin/channel-plugin@1.0.0`) behind one trait and
//! one macro:
//!
//! ```
//! use stellwerk_plugin_sdk::prelude::*;
//!
//! struct Public;
//!
//! impl ChannelPlugin for Public {
//!     fn describe() -> Description {
//!         Description::new("public", "1.0.0")
//!             .namespace("public", ChannelOptions::new().history(100, Duration::from_secs(600)))
//!     }
//!
//!     fn authorize_subscribe(req: &SubscribeRequest) -> SubscribeDecision {
//!         match &req.identity {
//!             Some(_) => SubscribeDecision::allow(),
//!             None => SubscribeDecision::deny("login required"),
//!         }
//!     }
//! }
//!
//! export_plugin!(Public);
//! ```
//!
//! Build it with `cargo xtask build-plugin <crate dir>` from a Stellwerk checkout (see
//! `docs/plugin-guide.md`);
//! test its rules with plain `cargo test` on the host, using the request builders of
//! [`testing`].
//!
//! # Layout
//! - [`ChannelPlugin`]: the hooks, in the order the broker calls them.
//! - [`Description`], [`ChannelOptions`]: what `describe` answers.
//! - [`SubscribeRequest`], [`PublishRequest`], [`FilterRequest`]: typed requests (channel
//!   split into namespace and rest, claims and data parsed into `serde_json::Value`).
//! - [`SubscribeDecision`], [`PublishDecision`], [`Delivery`]: the answers.
//! - [`host`]: the only things a plugin can ask the broker for (log, time, config).
//! - [`testing`]: native stand-ins and builders for unit tests (not on wasm).

mod abi;
mod decision;
mod description;
pub mod host;
mod request;
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;

pub use decision::{Delivery, Grant, PublishDecision, SubscribeDecision};
pub use description::{ChannelOptions, Description, Namespace};
pub use request::{Channel, FilterRequest, Identity, PublishRequest, Source, SubscribeRequest};
pub use serde_json::{self, json, Value};

/// Everything a plugin usually needs: `use stellwerk_plugin_sdk::prelude::*;`.
pub mod prelude {
    pub use crate::host::{self, Level};
    pub use crate::{
        export_plugin, Channel, ChannelOptions, ChannelPlugin, Delivery, Description,
        FilterRequest, Identity, PublishDecision, PublishRequest, Source, SubscribeDecision,
        SubscribeRequest,
    };
    pub use serde_json::{json, Value};
    pub use std::time::Duration;
}

/// The rules of one channel plugin. Only [`describe`](ChannelPlugin::describe) is required;
/// every other hook has a safe default.
///
/// Hooks are associated functions (no `self`): the broker may run several instances of a
/// plugin and reuse them across calls, so a hook must decide from its request alone (plus
/// [`host::config`]), not from state left behind by earlier calls.
///
/// A panic inside a hook traps the plugin; the broker then refuses the request (fail
/// closed) and logs the panic message under the plugin's name.
pub trait ChannelPlugin {
    /// Name, version and the namespaces this plugin governs. Called once per load.
    fn describe() -> Description;

    /// May this identity subscribe to this channel?
    ///
    /// Default: deny everyone (fail closed), so a plugin that forgets this hook exposes
    /// nothing.
    fn authorize_subscribe(req: &SubscribeRequest) -> SubscribeDecision {
        let _ = req;
        SubscribeDecision::deny("this channel does not accept subscriptions")
    }

    /// Runs for every publish, from the HTTP API or from a client.
    ///
    /// Default: allow the HTTP API (the Stud.IP server), deny clients. Clients can only
    /// publish at all where the namespace's [`ChannelOptions::client_publish`] is on.
    fn on_publish(req: &PublishRequest) -> PublishDecision {
        match req.source {
            Source::Http => PublishDecision::allow(),
            Source::Client => PublishDecision::deny("clients may not publish on this channel"),
        }
    }

    /// What subscribers with this `audience` tag (see
    /// [`SubscribeDecision::allow_with_audience`]) receive of a message. Called once per
    /// message and distinct audience, never per subscriber; subscribers without a tag have
    /// the audience `""`.
    ///
    /// The broker calls this only for plugins whose description says
    /// [`Description::with_filter`]; without it every subscriber gets the original message
    /// and this hook is never run. Default: [`Delivery::Original`].
    fn filter(req: &FilterRequest, audience: &str) -> Delivery {
        let _ = (req, audience);
        Delivery::Original
    }
}

/// Exports a [`ChannelPlugin`] implementation as the plugin's component exports.
///
/// Use it exactly once per plugin crate, at the top level: `export_plugin!(MyPlugin);`.
/// On non-wasm targets it only checks that the type implements [`ChannelPlugin`], so the
/// same crate builds for `cargo test` on the host.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        const _: () = {
            fn __stellwerk_assert_plugin<P: $crate::ChannelPlugin>() {}
            let _ = __stellwerk_assert_plugin::<$plugin>;
        };
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            type __StellwerkPlugin = $crate::__private::Exported<$plugin>;
            $crate::__private::export!(
                __StellwerkPlugin with_types_in $crate::__private::bindings
            );
        };
    };
}

/// Used by [`export_plugin!`]; not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use crate::abi::bindings;
    pub use crate::abi::bindings::__export as export;
    pub use crate::abi::Exported;
}
