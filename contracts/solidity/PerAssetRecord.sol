// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

/// @notice The pattern Agora avoids, kept for `bench/notarize.py`: one contract deployed per
///         asset, holding that asset's metadata.
contract PerAssetRecord {
    address public immutable owner;
    uint8 public immutable kind;
    bytes32 public immutable contentHash;
    bytes32 public immutable metadataHash;
    uint64 public immutable timestamp;
    string public title;

    constructor(uint8 kind_, bytes32 contentHash_, bytes32 metadataHash_, string memory title_) {
        owner = msg.sender;
        kind = kind_;
        contentHash = contentHash_;
        metadataHash = metadataHash_;
        timestamp = uint64(block.timestamp);
        title = title_;
    }
}
