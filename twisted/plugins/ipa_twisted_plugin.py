from twisted.application.service import ServiceMaker

ipa = ServiceMaker(
    "ipa-twisted agent",
    "ipa_twisted.tap",
    "A bare-metal provisioning agent for OpenStack Ironic.",
    "ipa",
)
