"""The task family: a LightningModule per problem on the chip-dataset contract, its data modules and losses."""
