//! `image_sink`: writes an image field of every message as a PNG file named by frame.
//!
//! Each PNG is written under a hidden temporary name next to the folder
//! (`.<stage>-<name>.png.tmp`) and renamed into it, so a killed run leaves only
//! complete images in the folder.

use std::path::PathBuf;

use dataflow_engine::{BuildContext, Built, Input, Outputs, Ports, Role, Stage, StageError, StageKind};
use dataflow_engine::{Field, FieldType};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::util::{frame_name, image_field};

/// Keys of `image_sink`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageSinkConfig {
    /// Which image field to write.
    #[serde(default = "default_field")]
    pub field: String,
    /// Sub-folder of the run's output folder (default: the stage id).
    #[serde(default)]
    pub dir: Option<PathBuf>,
}

fn default_field() -> String {
    "image".into()
}

/// The `image_sink` kind.
pub struct ImageSink;

struct Run {
    field: String,
    dir: PathBuf,
    stage: String,
}

impl Stage for Run {
    fn process(&mut self, input: Input, _out: &mut Outputs) -> Result<(), StageError> {
        let Input::Message { msg, .. } = input else {
            return Ok(());
        };
        let img = image_field(&msg, &self.field, &self.stage)?;
        let mut name = frame_name(&msg);
        if msg.part.count > 1 {
            name.push_str(&format!("-part{}", msg.part.index));
        }
        let path = self.dir.join(format!("{name}.png"));
        let dyn_img = match img.format {
            dataflow_engine::PixelFormat::Rgb8 => image::DynamicImage::ImageRgb8(img.to_rgb()),
            dataflow_engine::PixelFormat::Rgba8 => image::DynamicImage::ImageRgba8(img.to_rgba()),
            dataflow_engine::PixelFormat::Gray8 => image::DynamicImage::ImageLuma8(img.to_gray()),
        };
        // Written under a temporary name next to the folder and renamed into it, so a
        // killed run leaves whole PNGs only, and the folder holds nothing else.
        let tmp = self
            .dir
            .parent()
            .unwrap_or(&self.dir)
            .join(format!(".{}-{name}.png.tmp", self.stage));
        let written = dyn_img
            .save_with_format(&tmp, image::ImageFormat::Png)
            .map_err(|e| e.to_string())
            .and_then(|()| std::fs::rename(&tmp, &path).map_err(|e| e.to_string()));
        written.map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            StageError::io(format!(
                "stage `{}`: cannot write {} (frame {}): {e}; check the space and permissions of the output folder",
                self.stage,
                path.display(),
                msg.id
            ))
        })
    }
}

impl StageKind for ImageSink {
    type Config = ImageSinkConfig;
    const NAME: &'static str = "image_sink";
    const ROLE: Role = Role::Sink;
    const DOC: &'static str = "Writes an image field of every frame as PNG under the run's output folder.";
    const SWEEP: dataflow_engine::SweepRole = dataflow_engine::SweepRole::ImageFiles {
        key: "field",
        default: "image",
    };

    fn ports(c: &Self::Config) -> Ports {
        // PNG encoding is CPU work: keep it off the async threads.
        Ports {
            requires: vec![Field::new(c.field.clone(), FieldType::Image)],
            heavy: true,
            ..Ports::default()
        }
    }

    fn build(c: &Self::Config, ctx: &BuildContext) -> Result<Built, StageError> {
        let dir = ctx
            .out_dir
            .join(c.dir.clone().unwrap_or_else(|| PathBuf::from(&ctx.stage)));
        std::fs::create_dir_all(&dir).map_err(|e| StageError::io(format!("cannot create {}: {e}", dir.display())))?;
        Ok(Built::Stage(Box::new(Run {
            field: c.field.clone(),
            dir,
            stage: ctx.stage.clone(),
        })))
    }
}
