// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

/// @title Agora registry: participants, write-once asset anchors, result attestations,
///        agreements signed by both parties (EIP-712), and Merkle batch anchors.
/// @notice One registry per data space. Deploying a contract per asset costs about ten
///         times the gas of a storage write, so every record lives here.
contract AgoraRegistry {
    string public constant VERSION = "agora-registry/1";

    // Asset kinds, in the order the node uses them.
    uint8 public constant KIND_DATASET = 0;
    uint8 public constant KIND_MODEL = 1;
    uint8 public constant KIND_ONNX_MODEL = 2;
    uint8 public constant KIND_AGREEMENT = 3;
    uint8 public constant KIND_JOB_RESULT = 4;
    uint8 public constant KIND_FL_ROUND = 5;
    uint8 public constant KIND_VALIDATION = 6; // a dataset version's quality validation result
    uint8 public constant KIND_ALIAS = 7; // a model offering's alias moved to a version
    uint8 internal constant KIND_MAX = 7;
    uint256 internal constant MAX_PARENTS = 32;

    // secp256k1n / 2: signatures with a larger s are malleable copies (EIP-2).
    uint256 internal constant HALF_N = 0x7fffffffffffffffffffffffffffffff5d576e7357a4501ddfe92f46681b20a0;

    bytes32 public constant AGREEMENT_TYPEHASH = keccak256(
        "Agreement(bytes32 agreementId,bytes32 termsHash,address provider,address consumer,uint64 validUntil)"
    );
    bytes32 internal constant DOMAIN_TYPEHASH = keccak256(
        "EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
    );

    struct Participant {
        string name;
        string endpoint;
        uint64 registeredAt;
        uint64 updatedAt;
    }

    struct Anchor {
        bytes32 contentHash;
        bytes32 metadataHash;
        address owner;
        uint64 timestamp;
        uint8 kind;
        bytes32 resultHash;
        bytes32[] parents;
    }

    struct Batch {
        address owner;
        uint64 timestamp;
        uint32 count;
    }

    struct AgreementRecord {
        bytes32 termsHash;
        address provider;
        address consumer;
        uint64 validUntil;
        uint64 timestamp;
    }

    address public admin;
    bool public allowListMode;
    mapping(address => bool) public allowed;
    mapping(address => Participant) internal participants;
    mapping(bytes32 => Anchor) internal anchors;
    mapping(bytes32 => Batch) internal batches;
    mapping(bytes32 => AgreementRecord) internal agreements;

    event AdminChanged(address indexed previousAdmin, address indexed newAdmin);
    event AllowListModeChanged(bool enabled);
    event AllowListChanged(address indexed participant, bool allowed);
    event ParticipantRegistered(address indexed participant, string name, string endpoint);
    event ParticipantUpdated(address indexed participant, string name, string endpoint);
    event AssetAnchored(
        bytes32 indexed id,
        bytes32 indexed contentHash,
        address indexed owner,
        uint8 kind,
        bytes32 metadataHash,
        bytes32[] parents
    );
    event ResultAttested(bytes32 indexed id, bytes32 resultHash, address indexed owner);
    event BatchAnchored(bytes32 indexed root, address indexed owner, uint32 count);
    event AgreementRecorded(
        bytes32 indexed agreementId,
        address indexed provider,
        address indexed consumer,
        bytes32 termsHash,
        uint64 validUntil
    );

    error NotAdmin(address caller);
    error NotAllowed(address caller);
    error NotRegistered(address caller);
    error EmptyName();
    error BadKind(uint8 kind);
    error EmptyHash();
    error TooManyParents(uint256 count);
    error AlreadyAnchored(bytes32 id);
    error UnknownAsset(bytes32 id);
    error NotOwner(bytes32 id, address caller);
    error NotAttestable(bytes32 id, uint8 kind);
    error AlreadyAttested(bytes32 id);
    error EmptyBatch();
    error BatchExists(bytes32 root);
    error UnknownBatch(bytes32 root);
    error InvalidProof(bytes32 root, bytes32 leaf);
    error AgreementExists(bytes32 agreementId);
    error AgreementExpired(bytes32 agreementId, uint64 validUntil);
    error SameParties(address party);
    error MalformedSignature();
    error BadSignature(address expected, address recovered);

    modifier onlyAdmin() {
        if (msg.sender != admin) revert NotAdmin(msg.sender);
        _;
    }

    /// @dev Registered, and still allowed when the registry runs in allow-list mode.
    modifier onlyParticipant() {
        if (participants[msg.sender].registeredAt == 0) revert NotRegistered(msg.sender);
        if (allowListMode && !allowed[msg.sender]) revert NotAllowed(msg.sender);
        _;
    }

    constructor(bool allowListMode_) {
        admin = msg.sender;
        allowListMode = allowListMode_;
        emit AdminChanged(address(0), msg.sender);
        emit AllowListModeChanged(allowListMode_);
    }

    // ---------------------------------------------------------------- administration

    function transferAdmin(address newAdmin) external onlyAdmin {
        emit AdminChanged(admin, newAdmin);
        admin = newAdmin;
    }

    function setAllowListMode(bool enabled) external onlyAdmin {
        allowListMode = enabled;
        emit AllowListModeChanged(enabled);
    }

    function setAllowed(address participant, bool isAllowed) external onlyAdmin {
        allowed[participant] = isAllowed;
        emit AllowListChanged(participant, isAllowed);
    }

    // ---------------------------------------------------------------- participants

    /// @notice Register (or update) the caller as a participant: its name and protocol endpoint.
    function registerParticipant(string calldata name, string calldata endpoint) external {
        if (allowListMode && !allowed[msg.sender]) revert NotAllowed(msg.sender);
        if (bytes(name).length == 0) revert EmptyName();
        Participant storage p = participants[msg.sender];
        uint64 now_ = uint64(block.timestamp);
        p.name = name;
        p.endpoint = endpoint;
        p.updatedAt = now_;
        if (p.registeredAt == 0) {
            p.registeredAt = now_;
            emit ParticipantRegistered(msg.sender, name, endpoint);
        } else {
            emit ParticipantUpdated(msg.sender, name, endpoint);
        }
    }

    function getParticipant(address participant) external view returns (Participant memory) {
        return participants[participant];
    }

    function isParticipant(address participant) public view returns (bool) {
        return participants[participant].registeredAt != 0 && (!allowListMode || allowed[participant]);
    }

    // ---------------------------------------------------------------- asset anchors

    /// @notice The id of an asset: one owner anchors one (kind, content) once.
    function assetId(address owner, uint8 kind, bytes32 contentHash) public pure returns (bytes32) {
        return keccak256(abi.encode(owner, kind, contentHash));
    }

    /// @notice Anchor an asset, write-once. Parents are the ids of what it was made from.
    function anchor(uint8 kind, bytes32 contentHash, bytes32 metadataHash, bytes32[] calldata parents)
        external
        onlyParticipant
        returns (bytes32 id)
    {
        if (kind > KIND_MAX) revert BadKind(kind);
        if (contentHash == bytes32(0)) revert EmptyHash();
        if (parents.length > MAX_PARENTS) revert TooManyParents(parents.length);
        id = assetId(msg.sender, kind, contentHash);
        Anchor storage a = anchors[id];
        if (a.owner != address(0)) revert AlreadyAnchored(id);
        a.contentHash = contentHash;
        a.metadataHash = metadataHash;
        a.owner = msg.sender;
        a.timestamp = uint64(block.timestamp);
        a.kind = kind;
        a.parents = parents;
        emit AssetAnchored(id, contentHash, msg.sender, kind, metadataHash, parents);
    }

    /// @notice Attest, once, the verified result hash of a model a training job produced.
    function attestResult(bytes32 id, bytes32 resultHash) external {
        Anchor storage a = anchors[id];
        if (a.owner == address(0)) revert UnknownAsset(id);
        if (a.owner != msg.sender) revert NotOwner(id, msg.sender);
        if (a.kind != KIND_MODEL && a.kind != KIND_ONNX_MODEL && a.kind != KIND_JOB_RESULT) {
            revert NotAttestable(id, a.kind);
        }
        if (resultHash == bytes32(0)) revert EmptyHash();
        if (a.resultHash != bytes32(0)) revert AlreadyAttested(id);
        a.resultHash = resultHash;
        emit ResultAttested(id, resultHash, msg.sender);
    }

    function getAnchor(bytes32 id) external view returns (Anchor memory) {
        return anchors[id];
    }

    // ---------------------------------------------------------------- batch anchors

    /// @notice Anchor a Merkle root over `count` assets in one transaction.
    function anchorBatch(bytes32 root, uint32 count) external onlyParticipant {
        if (count == 0) revert EmptyBatch();
        if (root == bytes32(0)) revert EmptyHash();
        if (batches[root].owner != address(0)) revert BatchExists(root);
        batches[root] = Batch({owner: msg.sender, timestamp: uint64(block.timestamp), count: count});
        emit BatchAnchored(root, msg.sender, count);
    }

    function getBatch(bytes32 root) external view returns (Batch memory) {
        return batches[root];
    }

    /// @notice The leaf of an asset in a batch (double-hashed against second-preimage attacks).
    function batchLeaf(address owner, uint8 kind, bytes32 contentHash, bytes32 metadataHash)
        public
        pure
        returns (bytes32)
    {
        return keccak256(bytes.concat(keccak256(abi.encode(owner, kind, contentHash, metadataHash))));
    }

    /// @notice Check that an asset is in an anchored batch of its owner; reverts with the reason if not.
    /// @return timestamp the block time of the batch
    function verifyBatchMember(
        bytes32 root,
        address owner,
        uint8 kind,
        bytes32 contentHash,
        bytes32 metadataHash,
        bytes32[] calldata proof
    ) external view returns (uint64 timestamp) {
        Batch storage b = batches[root];
        if (b.owner == address(0)) revert UnknownBatch(root);
        if (b.owner != owner) revert NotOwner(root, owner);
        bytes32 leaf = batchLeaf(owner, kind, contentHash, metadataHash);
        bytes32 node = leaf;
        for (uint256 i = 0; i < proof.length; i++) {
            bytes32 sibling = proof[i];
            node = node < sibling
                ? keccak256(abi.encodePacked(node, sibling))
                : keccak256(abi.encodePacked(sibling, node));
        }
        if (node != root) revert InvalidProof(root, leaf);
        return b.timestamp;
    }

    // ---------------------------------------------------------------- agreements

    function domainSeparator() public view returns (bytes32) {
        return keccak256(
            abi.encode(DOMAIN_TYPEHASH, keccak256("AgoraRegistry"), keccak256("1"), block.chainid, address(this))
        );
    }

    /// @notice The EIP-712 digest both parties sign for an agreement.
    function agreementDigest(
        bytes32 agreementId,
        bytes32 termsHash,
        address provider,
        address consumer,
        uint64 validUntil
    ) public view returns (bytes32) {
        bytes32 structHash =
            keccak256(abi.encode(AGREEMENT_TYPEHASH, agreementId, termsHash, provider, consumer, validUntil));
        return keccak256(abi.encodePacked("\x19\x01", domainSeparator(), structHash));
    }

    /// @notice Record an agreement signed by both parties; both signatures are checked here.
    ///         ``validUntil`` is a unix time, or 0 for an agreement without an end.
    function recordAgreement(
        bytes32 agreementId,
        bytes32 termsHash,
        address provider,
        address consumer,
        uint64 validUntil,
        bytes calldata providerSignature,
        bytes calldata consumerSignature
    ) external {
        if (agreements[agreementId].provider != address(0)) revert AgreementExists(agreementId);
        if (termsHash == bytes32(0)) revert EmptyHash();
        if (provider == consumer) revert SameParties(provider);
        if (validUntil != 0 && validUntil <= block.timestamp) revert AgreementExpired(agreementId, validUntil);
        bytes32 digest = agreementDigest(agreementId, termsHash, provider, consumer, validUntil);
        _checkSigner(digest, providerSignature, provider);
        _checkSigner(digest, consumerSignature, consumer);
        agreements[agreementId] = AgreementRecord({
            termsHash: termsHash,
            provider: provider,
            consumer: consumer,
            validUntil: validUntil,
            timestamp: uint64(block.timestamp)
        });
        emit AgreementRecorded(agreementId, provider, consumer, termsHash, validUntil);
    }

    function getAgreement(bytes32 agreementId) external view returns (AgreementRecord memory) {
        return agreements[agreementId];
    }

    function _checkSigner(bytes32 digest, bytes calldata signature, address expected) internal pure {
        if (signature.length != 65) revert MalformedSignature();
        bytes32 r = bytes32(signature[0:32]);
        bytes32 s = bytes32(signature[32:64]);
        uint8 v = uint8(signature[64]);
        if (v < 27) v += 27;
        if ((v != 27 && v != 28) || uint256(s) > HALF_N) revert MalformedSignature();
        address recovered = ecrecover(digest, v, r, s);
        if (recovered == address(0) || recovered != expected) revert BadSignature(expected, recovered);
    }
}
